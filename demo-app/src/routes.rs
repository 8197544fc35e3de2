//! The demo's HTTP endpoints. Each one loads the session, acts, saves if it changed, and
//! answers; forms redirect back to `/` (POST-redirect-GET) so a reload never re-submits.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::{Form, Json};
use serde::{Deserialize, Serialize};

use crate::error::AppError;
use crate::html;
use crate::session::{Session, SessionMode, Sessions};

/// Longest accepted name or cart item, in characters.
const MAX_FIELD_CHARS: usize = 64;
/// Most items a cart holds: keeps sessions (and JWT cookies) well under 4 KiB.
const MAX_CART_ITEMS: usize = 20;

/// What every handler shares: who this node is and where its sessions live.
#[derive(Clone)]
pub struct AppState {
    pub node: Arc<str>,
    pub sessions: Arc<Sessions>,
}

/// The session as shown on the page and by `GET /api/session`.
#[derive(Debug, Serialize)]
pub struct SessionView {
    pub node: String,
    pub mode: SessionMode,
    /// The first characters of the session id: enough to tell sessions apart.
    pub session: Option<String>,
    pub user: Option<String>,
    pub cart: Vec<String>,
    pub version: u64,
}

impl SessionView {
    fn new(state: &AppState, session: &Session) -> Self {
        SessionView {
            node: state.node.to_string(),
            mode: state.sessions.mode(),
            session: session.id.as_ref().map(|id| id.short().to_string()),
            user: session.data.user.clone(),
            cart: session.data.cart.clone(),
            version: session.data.version,
        }
    }
}

pub async fn index(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Html<String>, AppError> {
    let session = state.sessions.load(&headers).await?;
    Ok(Html(html::page(&SessionView::new(&state, &session))))
}

pub async fn api_session(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<SessionView>, AppError> {
    let session = state.sessions.load(&headers).await?;
    Ok(Json(SessionView::new(&state, &session)))
}

#[derive(Deserialize)]
pub struct LoginForm {
    name: String,
}

pub async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Result<Response, AppError> {
    let name = field(&form.name, "A name is required to log in.")?;
    let mut session = state.sessions.load(&headers).await?;
    session.data.user = Some(name);
    let cookie = state.sessions.save(&mut session, true).await?;
    Ok((cookie, Redirect::to("/")).into_response())
}

#[derive(Deserialize)]
pub struct CartForm {
    item: String,
}

pub async fn add_to_cart(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<CartForm>,
) -> Result<Response, AppError> {
    let item = field(&form.item, "An item name is required.")?;
    let mut session = state.sessions.load(&headers).await?;
    if session.data.cart.len() >= MAX_CART_ITEMS {
        return Err(AppError::BadInput("The cart is full (20 items)."));
    }
    session.data.cart.push(item);
    let cookie = state.sessions.save(&mut session, false).await?;
    Ok((cookie, Redirect::to("/")).into_response())
}

pub async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let session = state.sessions.load(&headers).await?;
    let cookie = state.sessions.destroy(&session).await?;
    Ok((cookie, Redirect::to("/")).into_response())
}

/// Liveness for the load balancer: this node's process answers. Deliberately independent
/// of the store, so a store outage doesn't make the LB drop every node at once.
pub async fn healthz(State(state): State<AppState>) -> String {
    format!("ok {}\n", state.node)
}

/// Names every response with the node that produced it, for clients that talk to nodes
/// directly rather than through the LB's `X-Backend`.
pub async fn tag_node(State(state): State<AppState>, mut res: Response) -> Response {
    if let Ok(v) = HeaderValue::from_str(&state.node) {
        res.headers_mut().insert("x-node", v);
    }
    res
}

/// A trimmed, non-empty, printable form field of bounded length; `missing` says what was
/// expected when it is empty.
fn field(raw: &str, missing: &'static str) -> Result<String, AppError> {
    let v = raw.trim();
    if v.is_empty() {
        return Err(AppError::BadInput(missing));
    }
    if v.chars().count() > MAX_FIELD_CHARS || v.chars().any(char::is_control) {
        return Err(AppError::BadInput(
            "Fields are at most 64 printable characters.",
        ));
    }
    Ok(v.to_string())
}
