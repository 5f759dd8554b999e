//! Order use cases: placing an order in one statement (lock, check, take
//! stock, snapshot, outbox), reading with ownership, and status changes that restock
//! exactly once.

use std::{collections::HashMap, sync::Arc, time::Duration};

use chrono::{DateTime, Utc};

use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;
use validator::Validate;

use super::{
    domain::{self, Actor, EventType, OrderStatus, ShippingAddress},
    events::{self, NewEvent},
    idempotency::{self, Answer, Claim, ClaimedKey, IdempotencyKey},
    payments,
    repository::{
        self, LockedOrder, NewOrder, NewOrderLine, OrderItemRow, OrderRow, Placement, Start, StockRow,
    },
    types::{CreateOrderRequest, OrderEventResponse, OrderFilter, OrderResponse},
};
use crate::shared::jobs::Job;
use crate::{
    platform::{
        db::read_pool::ReadPool,
        http::{
            cursor::Cursors,
            error::{AppError, AppResult, FieldErrors},
            extract::{parse_json, validation_error},
            response::{PageParams, Pagination, split_page},
        },
        jobs::outbox::{self, Wakeup},
    },
    shared::auth::{AuthUser, Permission},
};

/// What [`OrderService::place_idempotent`] did.
#[derive(Debug)]
pub enum Placed {
    /// A new order.
    Created(Box<OrderResponse>),
    /// A retry: the first request's stored answer, unchanged.
    Replayed(Answer),
}

/// How long a failed keyed order waits for its key's release before answering.
const RELEASE_WAIT: Duration = Duration::from_millis(250);

/// Order use cases; cheap to clone.
#[derive(Clone)]
pub struct OrderService {
    db: PgPool,
    /// For the read an order is priced from.
    reads: ReadPool,
    wakeup: Wakeup,
    currency: Arc<str>,
    /// An idempotency claim without an answer for this long belongs to a dead request.
    abandoned_after: Duration,
    /// Signs the lists' cursors.
    cursors: Cursors,
    rules: OrderRules,
}

/// The order settings the service applies.
#[derive(Debug, Clone, Copy, Default)]
pub struct OrderRules {
    /// How long an order may stay unpaid (`None`: expiry is off).
    pub expires_in: Option<Duration>,
    /// Pending orders one user may hold (`None`: no limit).
    pub max_pending: Option<i64>,
}

/// The list's name inside its cursors.
const LIST: &str = "orders";
/// The history list's name inside its cursors.
const EVENTS: &str = "order-events";

/// How many times an order is priced and written before giving up, when its products
/// keep changing between the read it is priced from and the write.
const PLACE_ATTEMPTS: usize = 3;

/// The order's lines and total priced from `products`; a 400 naming each line whose
/// product is unknown or archived, a 409 for those short of stock (with what is available).
fn priced_lines(req: &CreateOrderRequest, products: Vec<StockRow>) -> AppResult<(Vec<NewOrderLine>, i64)> {
    let products: HashMap<Uuid, StockRow> = products.into_iter().map(|p| (p.id, p)).collect();
    let mut unknown = FieldErrors::new();
    for (i, item) in req.items.iter().enumerate() {
        if products.get(&item.product_id).is_none_or(|p| p.archived) {
            unknown.insert(format!("items[{i}].productId"), vec!["no such product".to_owned()]);
        }
    }
    if !unknown.is_empty() {
        return Err(AppError::invalid_fields(unknown));
    }
    let short: Vec<_> = req
        .items
        .iter()
        .filter_map(|item| {
            let p = &products[&item.product_id];
            (p.stock < item.quantity).then(
                || json!({"productId": item.product_id, "requested": item.quantity, "available": p.stock}),
            )
        })
        .collect();
    if !short.is_empty() {
        return Err(AppError::InsufficientStock(json!({ "products": short })));
    }
    let priced: Vec<(i64, i32)> =
        req.items.iter().map(|i| (products[&i.product_id].price_cents, i.quantity)).collect();
    let (line_totals, total) = domain::price(&priced)
        .ok_or_else(|| AppError::Internal(anyhow::anyhow!("order total overflowed")))?;
    let lines = req
        .items
        .iter()
        .zip(line_totals)
        .map(|(item, line_total_cents)| {
            let p = &products[&item.product_id];
            NewOrderLine {
                product_id: p.id,
                sku: p.sku.clone(),
                name: p.name.clone(),
                unit_price_cents: p.price_cents,
                quantity: item.quantity,
                line_total_cents,
            }
        })
        .collect();
    Ok((lines, total))
}

fn staff(caller: &AuthUser) -> bool {
    caller.can(Permission::OrdersManage)
}

fn transition_error(status: OrderStatus, action: &str) -> AppError {
    AppError::InvalidStatusTransition(format!("cannot {action} an order that is {}", status.as_str()))
}

impl OrderService {
    pub fn new(
        db: PgPool,
        reads: ReadPool,
        wakeup: Wakeup,
        currency: &str,
        abandoned_after: Duration,
        cursors: Cursors,
        rules: OrderRules,
    ) -> Self {
        Self { db, reads, wakeup, currency: Arc::from(currency), abandoned_after, cursors, rules }
    }

    /// Places an order from a raw JSON body, honouring an `Idempotency-Key`: the first
    /// request with a key claims it; a retry with the same key and body gets the stored
    /// answer back (201 or a final 4xx, never a second order); the same key with another
    /// body is a 422; a key whose first request still runs is a 409. A server error
    /// frees the key so that the client's retry can run.
    pub async fn place_idempotent(
        &self,
        caller: &AuthUser,
        key: Option<String>,
        body: &[u8],
    ) -> AppResult<Placed> {
        let user = caller.id;
        let actor = Actor::caller(caller.id, staff(caller));
        // Parsed straight into the typed request (no `Value` of the whole body first).
        let parsed = parse_json::<CreateOrderRequest>(body);
        let valid = |req: CreateOrderRequest| -> AppResult<CreateOrderRequest> {
            req.validate().map_err(validation_error)?;
            Ok(req)
        };
        let Some(key) = key else {
            let req = valid(parsed?)?;
            return self.place(actor, &req, None).await.map(|o| Placed::Created(Box::new(o)));
        };
        let key = match &parsed {
            Ok(req) => IdempotencyKey::for_request(key, req),
            Err(_) => IdempotencyKey::for_bytes(key, body),
        };
        let claim = match idempotency::claim(&self.db, user, &key, self.abandoned_after).await? {
            Claim::Acquired(claim) => claim,
            Claim::Replay(answer) => return Ok(Placed::Replayed(answer)),
            Claim::Mismatch => return Err(AppError::IdempotencyKeyMismatch),
            Claim::InFlight => return Err(AppError::IdempotencyKeyInUse),
        };
        let placed = match parsed.and_then(valid) {
            Ok(req) => self.place(actor, &req, Some(&claim)).await,
            Err(e) => Err(e),
        };
        let error = match placed {
            Ok(order) => return Ok(Placed::Created(Box::new(order))),
            Err(e) => e,
        };
        if error.status().is_server_error() || error.depends_on_the_callers_state() {
            // No final answer (a failure of ours, or a refusal that depends on the
            // caller's state rather than the request): free the key so the client's retry
            // is served afresh. The answer
            // waits at most RELEASE_WAIT for it: when the database is what failed, the
            // release would wait its own DB_ACQUIRE_TIMEOUT and double the time to a 503.
            // It goes on in the background; a claim never released is taken over after
            // `abandoned_after`.
            let (db, claim) = (self.db.clone(), claim.clone());
            let release = tokio::spawn(async move {
                if let Err(e) = idempotency::release(&db, user, &claim).await {
                    tracing::warn!(error = %e, "could not release an idempotency key");
                }
            });
            let _ = tokio::time::timeout(RELEASE_WAIT, release).await;
        } else {
            // A final 4xx is part of the contract too: store it as it is sent. If the
            // claim was taken over meanwhile, the new owner's answer wins.
            idempotency::complete(&self.db, user, &claim, &Answer::failed(&error)).await?;
        }
        Err(error)
    }

    /// Places an order, all or nothing. The order is priced from the products as they are
    /// (read without locks), then written in one statement that checks, under the row
    /// locks, that those products are unchanged ([`repository::place`]); if one changed
    /// in between, the order is priced again from what that statement saw, at most
    /// [`PLACE_ATTEMPTS`] times (then a 409). The statement runs in a transaction with
    /// generic plans ([`repository::PLACE_BEGIN`]); with a claimed key the stored 201
    /// answer joins it, so an order and its replayable answer exist together or not at all.
    ///
    /// Under a pending-order cap the transaction first takes the owner's lock
    /// ([`repository::lock_owner`]), so the count the statement checks cannot be passed
    /// by a parallel placement of the same user.
    #[tracing::instrument(skip_all, fields(user.id = ?actor.user_id))]
    async fn place(
        &self,
        actor: Actor,
        req: &CreateOrderRequest,
        claim: Option<&ClaimedKey>,
    ) -> AppResult<OrderResponse> {
        let user =
            actor.user_id.ok_or_else(|| AppError::Internal(anyhow::anyhow!("an order needs an owner")))?;
        let ids: Vec<Uuid> = req.items.iter().map(|i| i.product_id).collect();
        let mut products = self
            .reads
            .read(&|conn| {
                let ids = ids.clone(); // the read's future owns what it reads
                Box::pin(async move { repository::snapshot(conn, &ids).await })
            })
            .await?;
        for _ in 0..PLACE_ATTEMPTS {
            let (lines, total) = priced_lines(req, products)?;
            let new = NewOrder {
                // Time-ordered: the newest orders' entries sit together in the primary key
                // and in their lines' index, so the lists' pages read a few index pages,
                // not one per order.
                id: Uuid::now_v7(),
                user_id: user,
                total_cents: total,
                currency: &self.currency,
                address: req.shipping_address.as_ref(),
                idempotency_key: claim.map(|c| c.key.as_str()),
                actor,
                expires_in: self.rules.expires_in,
                max_pending: self.rules.max_pending,
            };
            let mut tx = self.db.begin_with(repository::PLACE_BEGIN).await?;
            if self.rules.max_pending.is_some() {
                repository::lock_owner(&mut *tx, user).await?;
            }
            let placement = repository::place(&mut *tx, &new, &lines).await?;
            match &placement {
                Placement::Placed(order) => {
                    let job = Job::OrderConfirmation { order_id: new.id, user_id: user };
                    outbox::push(&mut *tx, &job.into()).await?;
                    if let Some(claim) = claim {
                        let response = OrderResponse::placed((**order).clone(), lines.clone());
                        if !idempotency::complete(&mut *tx, user, claim, &Answer::created(&response)).await? {
                            // Our claim was taken over while we ran: the new owner answers; roll back.
                            return Err(AppError::IdempotencyKeyInUse);
                        }
                    }
                    tx.commit().await?;
                }
                // Frees the row locks now, not when the connection is next used.
                Placement::Refused(_) | Placement::TooManyPending(_) => tx.rollback().await?,
            }
            match placement {
                Placement::Placed(order) => {
                    self.wakeup.committed();
                    // The snapshot just written is the answer: no need to read it back.
                    let response = OrderResponse::placed(*order, lines);
                    tracing::info!(order.id = %response.id, order.total_cents = total, "order placed");
                    return Ok(response);
                }
                Placement::Refused(now) => products = now,
                Placement::TooManyPending(pending) => return Err(AppError::TooManyPendingOrders { pending }),
            }
        }
        Err(AppError::Conflict("the products changed while the order was placed; try again".to_owned()))
    }

    /// One order: the owner's, or any for staff. Anything else is a 404, never a 403.
    pub async fn get(&self, caller: &AuthUser, id: Uuid) -> AppResult<OrderResponse> {
        let order = repository::find(&self.db, id).await?.filter(|o| o.user_id == caller.id || staff(caller));
        let order = order.ok_or_else(|| AppError::not_found("order"))?;
        self.with_items(order).await
    }

    /// A page of orders: the caller's own, or for staff everyone's (optionally one user's).
    pub async fn list(
        &self,
        caller: &AuthUser,
        filter: &OrderFilter,
        page: &PageParams,
    ) -> AppResult<(Vec<OrderResponse>, Pagination)> {
        let owner = if staff(caller) {
            filter.user_id
        } else {
            match filter.user_id {
                Some(other) if other != caller.id => {
                    return Err(AppError::Forbidden("only staff may list other users' orders"));
                }
                _ => Some(caller.id),
            }
        };
        // What a cursor is bound to: the list's filters as this request applies them.
        let filters = (owner, filter.status);
        let limit = i64::from(page.limit);
        let start = match self.cursors.start::<(DateTime<Utc>, Uuid)>(LIST, &filters, page)? {
            Some((created_at, id)) => Start::After(created_at, id),
            None => Start::Offset(page.offset()),
        };
        let pagination = match page.cursor {
            Some(_) => Pagination::cursor(page.limit),
            None => Pagination::new(
                page.number(),
                page.limit,
                repository::count(&self.db, owner, filter.status).await?,
            ),
        };
        if pagination.total.is_some_and(|total| page.offset() >= total) {
            return Ok((Vec::new(), pagination));
        }
        // One row more than the page: whether there is a next page, without a count.
        let orders = repository::list(&self.db, owner, filter.status, limit + 1, start).await?;
        let (orders, next) = split_page(orders, page.limit, |last| {
            self.cursors.encode(LIST, &filters, &(last.created_at, last.id))
        });
        let ids: Vec<Uuid> = orders.iter().map(|o| o.id).collect();
        let mut items_by_order: HashMap<Uuid, Vec<OrderItemRow>> = HashMap::new();
        for item in repository::items_of(&self.db, &ids).await? {
            items_by_order.entry(item.order_id).or_default().push(item);
        }
        let data = orders
            .into_iter()
            .map(|o| {
                let items = items_by_order.remove(&o.id).unwrap_or_default();
                OrderResponse::new(o, items)
            })
            .collect();
        Ok((data, pagination.next(next)))
    }

    /// Changes the shipping address: the owner while pending, staff while pending or paid.
    #[tracing::instrument(skip_all, fields(order.id = %id))]
    pub async fn update_address(
        &self,
        caller: &AuthUser,
        id: Uuid,
        address: Option<&ShippingAddress>,
    ) -> AppResult<OrderResponse> {
        let mut tx = self.db.begin().await?;
        let order = self.lock_visible(&mut tx, caller, id).await?;
        if !order.status.address_editable_by(staff(caller)) {
            return Err(transition_error(order.status, "change the address of"));
        }
        repository::set_address(&mut *tx, id, address).await?;
        let event = NewEvent {
            order_id: id,
            kind: EventType::AddressChanged,
            from: None,
            to: None,
            actor: Actor::caller(caller.id, staff(caller)),
            detail: json!({"cleared": address.is_none()}),
        };
        events::record(&mut *tx, &event).await?;
        let order = self.reread(&mut tx, id).await?;
        tx.commit().await?;
        self.with_items(order).await
    }

    /// Cancels: the owner while pending, staff while pending or paid. Restocks once.
    #[tracing::instrument(skip_all, fields(order.id = %id))]
    pub async fn cancel(&self, caller: &AuthUser, id: Uuid) -> AppResult<OrderResponse> {
        let mut tx = self.db.begin().await?;
        let order = self.lock_visible(&mut tx, caller, id).await?;
        if !order.status.cancellable_by(staff(caller)) {
            return Err(transition_error(order.status, "cancel"));
        }
        let actor = Actor::caller(caller.id, staff(caller));
        let order =
            self.transition(&mut tx, &order, OrderStatus::Cancelled, EventType::StatusChanged, actor).await?;
        tx.commit().await?;
        self.wakeup.committed();
        self.with_items(order).await
    }

    /// Staff status change along the state machine; `cancelled` restocks once.
    #[tracing::instrument(skip_all, fields(order.id = %id, order.status = next.as_str()))]
    pub async fn set_status(
        &self,
        caller: &AuthUser,
        id: Uuid,
        next: OrderStatus,
    ) -> AppResult<OrderResponse> {
        let mut tx = self.db.begin().await?;
        let order = self.lock_visible(&mut tx, caller, id).await?;
        if !order.status.can_become(next) {
            return Err(transition_error(order.status, &format!("mark as {}", next.as_str())));
        }
        let actor = Actor::caller(caller.id, staff(caller));
        let order = self.transition(&mut tx, &order, next, EventType::StatusChanged, actor).await?;
        tx.commit().await?;
        self.wakeup.committed();
        self.with_items(order).await
    }

    /// Applies an allowed transition on a locked order and records it as `kind` by
    /// `actor`. The row lock makes the check and the restock atomic: a second cancel sees
    /// `cancelled` and is refused. A cancel by anyone but the owner (staff, expiry) tells
    /// the owner by e-mail, through the outbox.
    async fn transition(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
        order: &LockedOrder,
        next: OrderStatus,
        kind: EventType,
        actor: Actor,
    ) -> AppResult<OrderRow> {
        transition(tx, order, next, kind, actor).await?;
        self.reread(tx, order.id).await
    }

    async fn reread(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
        id: Uuid,
    ) -> AppResult<OrderRow> {
        repository::find(&mut **tx, id).await?.ok_or_else(|| AppError::not_found("order"))
    }

    async fn lock_visible(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
        caller: &AuthUser,
        id: Uuid,
    ) -> AppResult<LockedOrder> {
        repository::lock(&mut **tx, id)
            .await?
            .filter(|o| o.user_id == caller.id || staff(caller))
            .ok_or_else(|| AppError::not_found("order"))
    }

    /// An order's history, oldest first (owner or staff; anyone else gets a 404).
    pub async fn events(
        &self,
        caller: &AuthUser,
        id: Uuid,
        page: &PageParams,
    ) -> AppResult<(Vec<OrderEventResponse>, Pagination)> {
        let order = repository::find(&self.db, id).await?.filter(|o| o.user_id == caller.id || staff(caller));
        if order.is_none() {
            return Err(AppError::not_found("order"));
        }
        let after = self.cursors.start::<i64>(EVENTS, &id, page)?;
        let pagination = match page.cursor {
            Some(_) => Pagination::cursor(page.limit),
            None => Pagination::new(page.number(), page.limit, events::count(&self.db, id).await?),
        };
        let offset = if after.is_some() { 0 } else { page.offset() };
        let rows = events::list(&self.db, id, i64::from(page.limit) + 1, offset, after).await?;
        let (rows, next) = split_page(rows, page.limit, |last| self.cursors.encode(EVENTS, &id, &last.seq));
        Ok((rows.into_iter().map(OrderEventResponse::from).collect(), pagination.next(next)))
    }

    async fn with_items(&self, order: OrderRow) -> AppResult<OrderResponse> {
        let items = repository::items_of(&self.db, &[order.id]).await?;
        Ok(OrderResponse::new(order, items))
    }
}

/// Applies an allowed transition on a locked order, in the caller's transaction: the new
/// status, its history row, the restock of a cancel (exactly once: the row lock makes a
/// second cancel see `cancelled`), and the owner's `order-cancelled` e-mail when someone
/// else cancelled.
async fn transition(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    order: &LockedOrder,
    next: OrderStatus,
    kind: EventType,
    actor: Actor,
) -> AppResult<()> {
    repository::set_status(&mut **tx, order.id, next).await?;
    let mut event = NewEvent::status(order.id, kind, order.status, next, actor);
    if next == OrderStatus::Cancelled {
        repository::lock_order_products(&mut **tx, order.id).await?;
        let lines = repository::restock(&mut **tx, order.id).await?;
        tracing::info!(order.id = %order.id, restocked.lines = lines, "order cancelled and restocked");
        let reason = if kind == EventType::Expired { "expired" } else { "cancelled" };
        event.detail = json!({"reason": reason});
        // Recorded before the refund it may cause, so the history reads in order.
        events::record(&mut **tx, &event).await?;
        payments::on_cancel(tx, order.id, actor).await?;
        if actor.user_id != Some(order.user_id) {
            let job = Job::OrderCancelled { order_id: order.id, user_id: order.user_id, reason };
            outbox::push(&mut **tx, &job.into()).await?;
        }
        return Ok(());
    }
    events::record(&mut **tx, &event).await?;
    Ok(())
}

/// What one run of the expiry did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ExpiryReport {
    /// Pending orders that had no expiry time (placed while expiry was off) and got one.
    pub stamped: u64,
    /// Orders cancelled and restocked.
    pub expired: u64,
}

/// Orders one statement of the expiry reads or stamps at most.
const EXPIRY_BATCH: i64 = 500;

/// Cancels and restocks every pending order whose time to pay ran out (and whose payment
/// has not succeeded), each in its own transaction under its row lock, with an `expired`
/// history row and the owner's `order-cancelled` e-mail. Pending orders without an
/// expiry time get one, `timeout` from now, first: turning expiry on never cancels the
/// orders already waiting at once. Safe to run in several processes at once: an order
/// is expired by whichever locks it first, and the other sees it is no longer pending.
pub async fn expire_unpaid(db: &PgPool, wakeup: &Wakeup, timeout: Duration) -> sqlx::Result<ExpiryReport> {
    let mut report = ExpiryReport::default();
    loop {
        let stamped = repository::stamp_expiry(db, timeout, EXPIRY_BATCH).await?;
        report.stamped += stamped;
        if stamped < EXPIRY_BATCH as u64 {
            break;
        }
    }
    loop {
        let due = repository::expired(db, EXPIRY_BATCH).await?;
        let mut this_batch = 0;
        for &id in &due {
            match expire_one(db, id).await {
                Ok(true) => this_batch += 1,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(order.id = %id, error = %e, "expiring an order failed; the next run retries")
                }
            }
        }
        report.expired += this_batch;
        if this_batch > 0 {
            wakeup.committed();
        }
        // A short batch is the last; a full one that expired nothing would come back the
        // same (its orders failed, or are being paid): the next run tries them again.
        if (due.len() as i64) < EXPIRY_BATCH || this_batch == 0 {
            return Ok(report);
        }
    }
}

/// While expiry is off, pending orders carry no expiry time: what they showed while it
/// was on is cleared (in batches), so turning it on again gives them a full timeout from
/// then. How many were cleared.
pub async fn clear_expiry(db: &PgPool) -> sqlx::Result<u64> {
    let mut total = 0;
    loop {
        let n = repository::clear_expiry(db, EXPIRY_BATCH).await?;
        total += n;
        if n < EXPIRY_BATCH as u64 {
            return Ok(total);
        }
    }
}

/// Expires one order if it is still pending, due and unpaid; whether it did.
async fn expire_one(db: &PgPool, id: Uuid) -> AppResult<bool> {
    let mut tx = db.begin().await?;
    let Some(order) = repository::lock(&mut *tx, id).await? else { return Ok(false) };
    if order.status != OrderStatus::Pending || !repository::is_due(&mut *tx, id).await? {
        return Ok(false);
    }
    transition(&mut tx, &order, OrderStatus::Cancelled, EventType::Expired, Actor::SYSTEM).await?;
    tx.commit().await?;
    Ok(true)
}
