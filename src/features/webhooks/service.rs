//! Webhook endpoint management: create (the secret shown once), list, read, update,
//! delete, rotate the secret with a grace period; deliveries listed and retried.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use super::{
    repository::{self, DeliveryRow, EndpointRow},
    secrets::{SecretBox, SecretError},
    signature,
    types::{
        CreateEndpointRequest, DeliveryFilter, EndpointResponse, RotateSecretRequest, UpdateEndpointRequest,
        UrlRules, check_url, event_set,
    },
};
use crate::platform::http::{
    error::{AppError, AppResult},
    response::PageParams,
};

/// Default grace of a rotated-out secret.
const DEFAULT_GRACE_SECS: u32 = 86_400;

/// Cheap to clone.
#[derive(Clone)]
pub struct WebhookService {
    db: PgPool,
    secrets: SecretBox,
    rules: UrlRules,
    attempted: std::sync::Arc<tokio::sync::Notify>,
}

fn no_key(e: SecretError) -> AppError {
    AppError::ServiceUnavailable(
        "webhook secrets cannot be stored: WEBHOOK_SECRETS_KEY is not set".to_owned(),
    )
    .because(e)
}

impl WebhookService {
    pub fn new(db: PgPool, secrets: SecretBox, rules: UrlRules) -> Self {
        Self { db, secrets, rules, attempted: std::sync::Arc::default() }
    }

    /// Signalled by this process's webhook jobs after each attempt, awaited by its
    /// dispatcher: a finished attempt frees a slot of its endpoint.
    pub fn attempted(&self) -> std::sync::Arc<tokio::sync::Notify> {
        self.attempted.clone()
    }

    /// At start-up: the stored secrets can be read. With endpoints stored, a missing key
    /// (production has no fallback) or a key that does not open the newest endpoint's
    /// secret (a different key than they were sealed with) is an error: every delivery
    /// would fail. A database that does not answer (or is not migrated yet) is no reason
    /// to refuse: the process starts, degraded, as it does for any outage.
    pub async fn check_key(&self) -> anyhow::Result<()> {
        let newest = match repository::newest_sealed(&self.db).await {
            Ok(newest) => newest,
            Err(e) => {
                tracing::warn!(error = %e, "the webhook secrets key could not be checked against the stored secrets");
                return Ok(());
            }
        };
        let Some((id, sealed)) = newest else {
            return Ok(());
        };
        match self.secrets.open(id, &sealed) {
            Ok(_) => Ok(()),
            Err(SecretError::NoKey) => anyhow::bail!(
                "WEBHOOK_SECRETS_KEY is not set, and webhook endpoints exist whose secrets it sealed: \
                 set it (or WEBHOOK_SECRETS_KEY_FILE) to the key they were stored with"
            ),
            Err(SecretError::Corrupt) => anyhow::bail!(
                "WEBHOOK_SECRETS_KEY does not open the stored webhook secrets: it is not the key they \
                 were stored with"
            ),
        }
    }

    /// The key the endpoints' secrets are sealed with (the delivery jobs open them).
    pub fn secrets(&self) -> SecretBox {
        self.secrets.clone()
    }

    fn url(&self, raw: &str) -> AppResult<String> {
        check_url(raw, self.rules).map(|u| u.to_string()).map_err(|m| AppError::field("url", m))
    }

    fn response(row: EndpointRow, secret: Option<String>) -> EndpointResponse {
        EndpointResponse {
            id: row.id,
            url: row.url,
            events: row.events,
            description: row.description,
            enabled: row.enabled,
            secret,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }

    #[tracing::instrument(skip_all)]
    pub async fn create(&self, body: &CreateEndpointRequest) -> AppResult<EndpointResponse> {
        let url = self.url(&body.url)?;
        let id = Uuid::now_v7();
        let secret = signature::new_secret();
        let sealed = self.secrets.seal(id, &secret).map_err(no_key)?;
        let events = event_set(&body.events);
        let row =
            repository::insert_endpoint(&self.db, id, &url, &events, body.description.as_deref(), &sealed)
                .await?;
        tracing::info!(webhook.endpoint = %id, "webhook endpoint created");
        Ok(Self::response(row, Some(secret)))
    }

    pub async fn get(&self, id: Uuid) -> AppResult<EndpointResponse> {
        let row = repository::find_endpoint(&self.db, id)
            .await?
            .ok_or_else(|| AppError::not_found("webhook endpoint"))?;
        Ok(Self::response(row, None))
    }

    /// A page (one row more than the limit) and, in page mode, the total.
    pub async fn list(
        &self,
        page: &PageParams,
        after: Option<(DateTime<Utc>, Uuid)>,
    ) -> AppResult<(Vec<EndpointResponse>, Option<i64>)> {
        let rows =
            repository::list_endpoints(&self.db, i64::from(page.limit) + 1, page.offset(), after).await?;
        // Page mode counts; cursor mode does not.
        let total = match page.cursor {
            Some(_) => None,
            None => Some(repository::count_endpoints(&self.db).await?),
        };
        Ok((rows.into_iter().map(|r| Self::response(r, None)).collect(), total))
    }

    pub async fn update(&self, id: Uuid, body: &UpdateEndpointRequest) -> AppResult<EndpointResponse> {
        let url = body.url.as_deref().map(|u| self.url(u)).transpose()?;
        let events = body.events.as_deref().map(event_set);
        let description = body.description.as_ref().map(|d| d.as_deref());
        let row = repository::update_endpoint(
            &self.db,
            id,
            url.as_deref(),
            events.as_deref(),
            description,
            body.enabled,
        )
        .await?
        .ok_or_else(|| AppError::not_found("webhook endpoint"))?;
        Ok(Self::response(row, None))
    }

    pub async fn delete(&self, id: Uuid) -> AppResult<()> {
        if !repository::delete_endpoint(&self.db, id).await? {
            return Err(AppError::not_found("webhook endpoint"));
        }
        tracing::info!(webhook.endpoint = %id, "webhook endpoint deleted");
        Ok(())
    }

    /// A new secret; the current one keeps signing (beside it) for the grace period.
    pub async fn rotate(&self, id: Uuid, body: &RotateSecretRequest) -> AppResult<EndpointResponse> {
        let grace = body.grace_seconds.unwrap_or(DEFAULT_GRACE_SECS);
        let mut tx = self.db.begin().await?;
        let current = repository::find_endpoint(&mut *tx, id)
            .await?
            .ok_or_else(|| AppError::not_found("webhook endpoint"))?;
        let secret = signature::new_secret();
        let sealed = self.secrets.seal(id, &secret).map_err(no_key)?;
        let (previous, until) = if grace == 0 {
            (None, None)
        } else {
            (
                Some(current.secret_sealed.as_slice()),
                Some(Utc::now() + chrono::Duration::seconds(i64::from(grace))),
            )
        };
        let row = repository::rotate_secret(&mut *tx, id, &sealed, previous, until)
            .await?
            .ok_or_else(|| AppError::not_found("webhook endpoint"))?;
        tx.commit().await?;
        tracing::info!(webhook.endpoint = %id, grace_seconds = grace, "webhook secret rotated");
        Ok(Self::response(row, Some(secret)))
    }

    pub async fn deliveries(
        &self,
        endpoint: Uuid,
        filter: &DeliveryFilter,
        page: &PageParams,
        after: Option<(DateTime<Utc>, Uuid)>,
    ) -> AppResult<(Vec<DeliveryRow>, Option<i64>)> {
        if repository::find_endpoint(&self.db, endpoint).await?.is_none() {
            return Err(AppError::not_found("webhook endpoint"));
        }
        let rows = repository::list_deliveries(
            &self.db,
            endpoint,
            filter.status,
            i64::from(page.limit) + 1,
            page.offset(),
            after,
        )
        .await?;
        // Page mode counts; cursor mode does not.
        let total = match page.cursor {
            Some(_) => None,
            None => Some(repository::count_deliveries(&self.db, endpoint, filter.status).await?),
        };
        Ok((rows, total))
    }

    pub async fn retry(&self, endpoint: Uuid, delivery: Uuid) -> AppResult<()> {
        match repository::retry_delivery(&self.db, endpoint, delivery).await? {
            None => Err(AppError::not_found("delivery")),
            Some(false) => Err(AppError::Conflict("only a failed delivery can be retried".to_owned())),
            Some(true) => Ok(()),
        }
    }
}
