//! The HTTP side: health checks and the worker API.
//!
//! Worker API requests carry `Authorization: Bearer <api key>`. Errors are
//! JSON `{ "error": "…" }` whose text tells the worker's author what to fix.

use std::sync::atomic::Ordering;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use leadgate_protocol::leads::LeadsChanged;
use leadgate_protocol::{WorkerEvent, parse_job_id};
use leadgate_store::StoreError;
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::{error, info};
use validator::Validate;

use crate::App;
use crate::auth::{AuthError, bearer_token, constant_time_eq};
use crate::fanout::Fanout;

pub fn router(app: App, max_body: usize) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/v1/jobs", post(create_job))
        .route("/api/v1/jobs/{job_id}/events", post(post_event))
        .route("/api/v1/leads/sync", post(leads_sync))
        .route("/api/v1/leads/events", post(leads_event))
        .route("/ws/leads/", get(crate::leads::ws::upgrade))
        .route("/ws/leads", get(crate::leads::ws::upgrade))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(app)
}

/// An API error: a status and a message for the caller.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

impl From<BytesRejection> for ApiError {
    fn from(rejection: BytesRejection) -> Self {
        info!(status = %rejection.status(), reason = %rejection.body_text(), "Refused a request body.");
        ApiError::new(rejection.status(), rejection.body_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(json!({ "error": self.message }))).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

async fn metrics(State(app): State<App>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.metrics_text(),
    )
}

async fn readyz(State(app): State<App>) -> (StatusCode, Json<Value>) {
    let database = match app.store.ping().await {
        Ok(()) => "ok",
        Err(e) => {
            error!(error = %e, "Readiness check: the database does not answer.");
            "unreachable"
        }
    };
    let redis = match &*app.fanout {
        Fanout::Local => None,
        Fanout::Redis(redis) if !redis.is_subscribed() => Some("unsubscribed"),
        Fanout::Redis(redis) if !redis.ping().await => Some("unreachable"),
        Fanout::Redis(_) => Some("ok"),
    };
    let draining = app.draining.load(Ordering::Relaxed);
    let ready = !draining && database == "ok" && redis.is_none_or(|r| r == "ok");
    let summary = match (ready, draining) {
        (true, _) => "ok",
        (false, true) => "draining",
        (false, false) => "unavailable",
    };
    let mut body = json!({ "status": summary, "database": database });
    if let Some(redis) = redis {
        body["redis"] = json!(redis);
    }
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}

/// Checks the worker's API key against every configured key. The key is
/// never logged.
fn authorize_worker(app: &App, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(key) = bearer_token(headers) else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing API key: send Authorization: Bearer <api key>",
        ));
    };
    // Compare with every key, without stopping at a match, so the time taken
    // does not tell which key matched.
    let known = app.api_keys.iter().fold(false, |found, k| {
        found | constant_time_eq(k.expose().as_bytes(), key.as_bytes())
    });
    if known {
        Ok(())
    } else {
        info!("Refused a worker request: unknown API key.");
        Err(ApiError::new(StatusCode::UNAUTHORIZED, "unknown API key"))
    }
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("invalid body: {e}")))
}

#[derive(Debug, Deserialize, Validate)]
#[serde(deny_unknown_fields)]
struct CreateJob {
    #[validate(length(min = 1, max = 255, message = "user_id must be 1 to 255 characters"))]
    user_id: String,
    #[serde(default)]
    total_leads: u32,
}

async fn create_job(
    State(app): State<App>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    authorize_worker(&app, &headers)?;
    let request: CreateJob = parse_json(&body?)?;
    request.validate().map_err(|e| {
        let reasons: Vec<String> = e
            .field_errors()
            .values()
            .flat_map(|errors| errors.iter())
            .map(|err| {
                err.message
                    .clone()
                    .unwrap_or_else(|| err.code.clone())
                    .into_owned()
            })
            .collect();
        ApiError::bad_request(reasons.join("; "))
    })?;
    let job = app
        .store
        .create_job(&request.user_id, request.total_leads)
        .await
        .map_err(store_error)?;
    info!(job = %job, user = %request.user_id, "Created a job.");
    Ok((StatusCode::CREATED, Json(json!({ "jobId": job }))))
}

async fn post_event(
    State(app): State<App>,
    Path(raw_job): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    authorize_worker(&app, &headers)?;
    let invalid = |e: ApiError| {
        app.metrics.worker_event("http", "invalid");
        e
    };
    let job = parse_job_id(&Value::String(raw_job))
        .map_err(|_| invalid(ApiError::bad_request("the jobId in the URL must be a UUID")))?;
    let body = body.map_err(|e| invalid(e.into()))?;
    let event = WorkerEvent::from_slice(&body).map_err(|e| {
        info!(job = %job, source = "http", reason = %e, "Refused an invalid job event.");
        invalid(ApiError::bad_request(e.to_string()))
    })?;
    if event.job_id.is_some_and(|id| id != job) {
        return Err(invalid(ApiError::bad_request(
            "the jobId in the body does not match the one in the URL",
        )));
    }
    let update = app
        .apply_event(job, event.event, event.seq)
        .await
        .map_err(|e| {
            app.metrics.worker_event("http", "dropped");
            store_error(e)
        })?;
    app.metrics.worker_event("http", "delivered");
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "jobId": job, "seq": update.seq })),
    ))
}

/// `POST /api/v1/leads/sync`, for a signed-in user (Bearer JWT): the same
/// as the `sync` message.
async fn leads_sync(
    State(app): State<App>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let token = bearer_token(&headers)
        .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, AuthError::Missing.to_string()))?;
    let user = app
        .verifier
        .verify(token)
        .map_err(|e| ApiError::new(StatusCode::UNAUTHORIZED, e.to_string()))?;
    let body = body?;
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct SyncRequest {
        #[serde(default)]
        provider: Option<String>,
    }
    let request: SyncRequest = if body.iter().all(u8::is_ascii_whitespace) {
        SyncRequest { provider: None }
    } else {
        parse_json(&body)?
    };
    let accepted = app
        .leads
        .sync(&user, request.provider.as_deref())
        .await
        .map_err(|detail| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, detail))?;
    Ok((StatusCode::ACCEPTED, Json(json!(accepted))))
}

/// `POST /api/v1/leads/events` `{ type: 'leads_updated', provider }`, for
/// crawlers (API key): tells every instance's leads clients.
async fn leads_event(
    State(app): State<App>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, ApiError> {
    authorize_worker(&app, &headers)?;
    let message: LeadsChanged = parse_json(&body?)?;
    app.fanout.leads_changed(&app.leads, message.provider).await;
    Ok(StatusCode::ACCEPTED)
}

fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::JobNotFound => ApiError::new(StatusCode::NOT_FOUND, e.to_string()),
        StoreError::SeqConflict { .. } => ApiError::new(StatusCode::CONFLICT, e.to_string()),
        StoreError::Db(_) => {
            error!(error = %e, "Database error in the worker API.");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the database is unavailable; retry later",
            )
        }
    }
}
