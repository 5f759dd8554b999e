//! E-mail delivery through real transports: a real SMTP server (aiosmtpd, which
//! `scripts/services` installs; each test starts its own on a free port) and the file
//! transport.

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use serde_json::json;
use storefront::platform::{
    config::EmailTransport,
    mail::{LettreMailer, MailError, OutgoingMail, templates::Templates},
};

use crate::helpers::{LocalServer, test_settings};

/// A real SMTP server (aiosmtpd with `tests/support/smtp_handler.py`) storing every
/// message it accepts in a Maildir; killed on drop. [`Self::fail`] and [`Self::slow`]
/// make it refuse or stall, as a broken or overloaded server would.
pub struct SmtpServer {
    server: LocalServer,
}

impl SmtpServer {
    pub fn start() -> Self {
        let support = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support");
        let server = LocalServer::start("smtp", |port, dir| {
            let mut c = Command::new("/usr/bin/python3");
            c.args([
                "-m",
                "aiosmtpd",
                "-n",
                "-l",
                &format!("127.0.0.1:{port}"),
                "-c",
                "smtp_handler.ControlledMailbox",
            ])
            .arg(dir)
            .env("PYTHONPATH", support);
            c
        });
        Self { server }
    }

    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.server.port)
    }

    /// Every message received so far, as raw RFC 5322 text.
    pub fn messages(&self) -> Vec<String> {
        read_dir_texts(&self.server.dir.join("maildir/new"))
    }

    /// Waits until at least `n` messages arrived (panics after `within`); returns them all.
    pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<String> {
        let started = Instant::now();
        loop {
            let messages = self.messages();
            if messages.len() >= n {
                return messages;
            }
            assert!(
                started.elapsed() < within,
                "{} of {n} e-mails arrived within {within:?}",
                messages.len()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Refuses every message with a temporary error (451) while `on`.
    pub fn fail(&self, on: bool) {
        self.flag("fail", on.then_some(""));
    }

    /// Makes each RCPT wait `seconds` first (`None`: answer at once).
    pub fn slow(&self, seconds: Option<u32>) {
        self.flag("slow", seconds.map(|s| s.to_string()).as_deref());
    }

    /// How many RCPT commands the server has seen (sends begun).
    pub fn recipients_seen(&self) -> usize {
        std::fs::read_to_string(self.server.dir.join("rcpt.log")).map(|s| s.lines().count()).unwrap_or(0)
    }

    fn flag(&self, name: &str, content: Option<&str>) {
        self.server.flag(name, content);
    }
}

fn read_dir_texts(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    entries.filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok()).collect()
}

/// The decoded body of the MIME part with `content_type` (quoted-printable or 7/8 bit).
pub fn part(message: &str, content_type: &str) -> String {
    let start = message
        .find(&format!("Content-Type: {content_type}"))
        .unwrap_or_else(|| panic!("no {content_type} part"));
    let rest = &message[start..];
    let body_start =
        rest.find("\r\n\r\n").map(|i| i + 4).or_else(|| rest.find("\n\n").map(|i| i + 2)).unwrap();
    let body = &rest[body_start..];
    let end = body.find("\n--").unwrap_or(body.len());
    let raw = &body[..end];
    let headers = &rest[..body_start];
    if headers.contains("quoted-printable") { decode_qp(raw) } else { raw.replace("\r\n", "\n") }
}

fn decode_qp(raw: &str) -> String {
    let joined = raw.replace("=\r\n", "").replace("=\n", "");
    let bytes = joined.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'='
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&joined[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).replace("\r\n", "\n")
}

fn welcome() -> OutgoingMail {
    let templates = Templates::new("USD").unwrap();
    let content = templates
        .render(
            "welcome",
            json!({"email": "ann@example.com", "name": "Ann", "public_url": "http://shop.example"}),
        )
        .unwrap();
    OutgoingMail { to: "ann@example.com".into(), content }
}

#[tokio::test]
async fn smtp_delivers_a_multipart_text_and_html_message() {
    // Arrange
    let server = SmtpServer::start();
    let mut settings = test_settings();
    settings.email_transport = EmailTransport::Smtp;
    settings.smtp_url = Some(server.url().into());
    let mailer = LettreMailer::from_settings(&settings).unwrap();
    // Act
    mailer.send(&welcome()).await.unwrap();
    // Assert
    let messages = server.messages();
    assert_eq!(messages.len(), 1);
    let m = &messages[0];
    assert!(m.contains("From: Storefront <no-reply@storefront.local>"), "{m}");
    assert!(m.contains("To: ann@example.com"), "{m}");
    assert!(m.contains("Subject: Welcome to Storefront"), "{m}");
    assert!(m.contains("multipart/alternative"), "{m}");
    assert!(part(m, "text/plain").contains("Your account ann@example.com is ready."), "{m}");
    let html = part(m, "text/html");
    // minijinja escapes `/` too (OWASP): `&#x2f;` is what a browser reads as `/`.
    let html_unescaped = html.replace("&#x2f;", "/");
    assert!(html.contains("<strong>ann@example.com</strong>"), "{html}");
    assert!(html_unescaped.contains("href=\"http://shop.example\""), "{html}");
}

#[tokio::test]
async fn the_file_transport_writes_one_eml_file_per_message() {
    let dir = std::env::temp_dir().join(format!("storefront-mail-{}", uuid::Uuid::new_v4().simple()));
    let mut settings = test_settings();
    settings.email_transport = EmailTransport::File;
    settings.mail_dir = dir.to_string_lossy().into_owned();
    let mailer = LettreMailer::from_settings(&settings).unwrap();
    mailer.send(&welcome()).await.unwrap();
    mailer.send(&welcome()).await.unwrap();
    let files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(files.len(), 2);
    assert!(files.iter().all(|f| f.extension().is_some_and(|e| e == "eml")));
    let text = std::fs::read_to_string(&files[0]).unwrap();
    assert!(text.contains("Subject: Welcome to Storefront") && text.contains("text/html"), "{text}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn a_server_that_never_answers_fails_the_send_within_the_timeout() {
    // A socket that accepts and then says nothing (not even the SMTP greeting).
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            open.push(socket);
        }
    });
    let mut settings = test_settings();
    settings.email_transport = EmailTransport::Smtp;
    settings.smtp_url = Some(format!("smtp://127.0.0.1:{port}").into());
    settings.smtp_timeout = Duration::from_millis(500);
    let mailer = LettreMailer::from_settings(&settings).unwrap();
    let started = Instant::now();
    let err = mailer.send(&welcome()).await.unwrap_err();
    assert!(matches!(err, MailError::Transient(_)), "{err}");
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
    held.abort();
}
