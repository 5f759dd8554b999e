//! E-mail templates (minijinja), compiled in from `templates/email/` where a designer
//! edits them: `NAME.subject.txt`, `NAME.txt` and `NAME.html` per message, the HTML
//! parts auto-escaped. A unit test renders every template.

use minijinja::{Environment, Value};
use serde::Serialize;

/// Every message Storefront sends, by template name.
pub const NAMES: &[&str] = &[
    "welcome",
    "reset-password",
    "verify-email",
    "order-confirmation",
    "order-cancelled",
    "payment-received",
    "report-ready",
];

macro_rules! embedded {
    ($($file:literal),* $(,)?) => {
        &[$(($file, include_str!(concat!("../../../templates/email/", $file)))),*]
    };
}

const FILES: &[(&str, &str)] = embedded!(
    "_layout.html",
    "welcome.subject.txt",
    "welcome.txt",
    "welcome.html",
    "reset-password.subject.txt",
    "reset-password.txt",
    "reset-password.html",
    "verify-email.subject.txt",
    "verify-email.txt",
    "verify-email.html",
    "order-confirmation.subject.txt",
    "order-confirmation.txt",
    "order-confirmation.html",
    "order-cancelled.subject.txt",
    "order-cancelled.txt",
    "order-cancelled.html",
    "payment-received.subject.txt",
    "payment-received.txt",
    "payment-received.html",
    "report-ready.subject.txt",
    "report-ready.txt",
    "report-ready.html",
);

/// A rendered message: subject and both MIME parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// The loaded templates; cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Templates {
    env: Environment<'static>,
}

impl Templates {
    /// Loads every template; `currency` (ISO 4217) is what the `money` filter formats in.
    pub fn new(currency: &str) -> anyhow::Result<Self> {
        let mut env = Environment::new();
        for (name, source) in FILES {
            env.add_template(name, source)?;
        }
        let currency = currency.to_owned();
        env.add_filter("money", move |cents: i64| format_money(cents, &currency));
        Ok(Self { env })
    }

    /// Renders template `name` with `context`.
    pub fn render(&self, name: &str, context: impl Serialize) -> anyhow::Result<Rendered> {
        let ctx = Value::from(minijinja::value::Serde(context));
        let part = |suffix: &str| -> anyhow::Result<String> {
            Ok(self.env.get_template(&format!("{name}.{suffix}"))?.render(&ctx)?)
        };
        Ok(Rendered {
            subject: part("subject.txt")?.trim().to_owned(),
            text: part("txt")?,
            html: part("html")?,
        })
    }
}

/// Integer minor units as a price in `currency`: `$12.50`, `€0.99`, `¥1200`, `CHF 3.00`.
pub fn format_money(cents: i64, currency: &str) -> String {
    // ISO 4217 minor units: most currencies have 2 digits, these have none or three.
    let digits = match currency {
        "JPY" | "KRW" | "VND" | "CLP" | "ISK" | "UGX" | "XAF" | "XOF" | "PYG" | "RWF" => 0,
        "BHD" | "KWD" | "OMR" | "JOD" | "TND" | "LYD" | "IQD" => 3,
        _ => 2,
    };
    let sign = if cents < 0 { "-" } else { "" };
    let abs = cents.unsigned_abs();
    let amount = match digits {
        0 => abs.to_string(),
        d => {
            let unit = 10u64.pow(d);
            format!("{}.{:0width$}", abs / unit, abs % unit, width = d as usize)
        }
    };
    match currency {
        "USD" => format!("{sign}${amount}"),
        "EUR" => format!("{sign}€{amount}"),
        "GBP" => format!("{sign}£{amount}"),
        "JPY" => format!("{sign}¥{amount}"),
        other => format!("{sign}{other} {amount}"),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn every_template_renders_subject_text_and_html() {
        let t = Templates::new("USD").unwrap();
        let ctx = json!({
            "email": "ann@example.com", "name": "Ann", "public_url": "http://x",
            "reset_url": "http://x/reset#token=abc", "valid_minutes": 60,
            "verify_url": "http://x/verify-email#token=abc", "valid_hours": 48,
            "order_number": "1234", "order_url": "http://x/o", "total_cents": 1250,
            "lines": [{"name": "Mug", "sku": "MUG", "quantity": 2, "unit_price_cents": 625, "line_total_cents": 1250}],
            "address": null, "report_type": "sales", "from": "2026-11-01", "to": "2026-11-30",
            "row_count": 30, "download_url": "http://x/d",
        });
        for name in NAMES {
            let r = t.render(name, &ctx).unwrap();
            assert!(!r.subject.is_empty() && !r.subject.contains('\n'), "{name}: {r:?}");
            assert!(!r.text.contains('<'), "{name}: text part has markup");
            assert!(r.html.contains("<html"), "{name}: html part has the layout");
        }
    }

    #[test]
    fn html_parts_escape_values_and_text_parts_do_not() {
        let t = Templates::new("USD").unwrap();
        let r = t
            .render(
                "welcome",
                json!({"email": "a@b.co", "name": "<b>Ann</b> & co", "public_url": "http://x"}),
            )
            .unwrap();
        assert!(r.html.contains("&lt;b&gt;Ann") && r.html.contains("&amp; co"), "{}", r.html);
        assert!(!r.html.contains("<b>Ann"), "{}", r.html);
        assert!(r.text.contains("<b>Ann</b> & co"));
    }

    #[test]
    fn order_lines_show_quantities_prices_and_the_total() {
        let t = Templates::new("EUR").unwrap();
        let ctx = json!({
            "order_number": "A1", "order_url": "http://x/o", "total_cents": 2797, "address": null,
            "lines": [
                {"name": "Mug", "sku": "MUG", "quantity": 2, "unit_price_cents": 1250, "line_total_cents": 2500},
                {"name": "Tea", "sku": "TEA", "quantity": 3, "unit_price_cents": 99, "line_total_cents": 297},
            ],
        });
        let r = t.render("order-confirmation", ctx).unwrap();
        assert!(r.text.contains("2 x Mug (MUG) at €12.50 = €25.00"), "{}", r.text);
        assert!(r.text.contains("3 x Tea (TEA) at €0.99 = €2.97"), "{}", r.text);
        assert!(r.text.contains("Total: €27.97"), "{}", r.text);
        assert!(r.html.contains("€27.97"));
    }

    #[test]
    fn money_follows_the_currency_minor_units() {
        assert_eq!(format_money(1250, "USD"), "$12.50");
        assert_eq!(format_money(5, "GBP"), "£0.05");
        assert_eq!(format_money(1200, "JPY"), "¥1200");
        assert_eq!(format_money(1234, "KWD"), "KWD 1.234");
        assert_eq!(format_money(300, "CHF"), "CHF 3.00");
        assert_eq!(format_money(-150, "USD"), "-$1.50");
    }
}
