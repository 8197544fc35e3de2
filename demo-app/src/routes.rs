//! The demo's HTTP endpoints. Handlers read and change the [`Session`]; the session layer
//! saves it before the response leaves. Forms redirect back to `/` (POST-redirect-GET) so
//! a reload never re-submits.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Form, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use serde::{Deserialize, Serialize};
use session_layer::store::NearCacheStats;
use session_layer::{CachedStore, Session, SessionManager};

use crate::error::AppError;
use crate::html;
use crate::sessions::SessionMode;

/// Longest accepted name or cart item, in characters.
const MAX_FIELD_CHARS: usize = 64;
/// Most items a cart holds: keeps sessions (and JWT cookies) well under 4 KiB.
pub const MAX_CART_ITEMS: usize = 20;
const CART: &str = "cart";

/// What every handler shares: who this node is and how it keeps sessions.
#[derive(Clone)]
pub struct AppState {
    pub node: Arc<str>,
    pub mode: SessionMode,
    pub near_cache: Option<Arc<CachedStore>>,
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
    /// How many times the session has been saved.
    pub version: u64,
}

impl SessionView {
    fn new(state: &AppState, session: &Session) -> Self {
        SessionView {
            node: state.node.to_string(),
            mode: state.mode,
            session: session.short_id(),
            user: session.user(),
            cart: session.get(CART).unwrap_or_default(),
            version: session.version(),
        }
    }
}

pub async fn index(State(state): State<AppState>, session: Session) -> Html<String> {
    Html(html::page(&SessionView::new(&state, &session)))
}

pub async fn api_session(State(state): State<AppState>, session: Session) -> Json<SessionView> {
    Json(SessionView::new(&state, &session))
}

#[derive(Deserialize)]
pub struct LoginForm {
    name: String,
}

/// Signs in: a privilege change, so the session moves to a fresh id.
pub async fn login(session: Session, Form(form): Form<LoginForm>) -> Result<Redirect, AppError> {
    let name = field(&form.name, "A name is required to log in.")?;
    session.set_user(Some(&name));
    Ok(Redirect::to("/"))
}

#[derive(Deserialize)]
pub struct CartForm {
    item: String,
}

/// Adds an item with `update`, so two additions racing on two nodes both land.
pub async fn add_to_cart(
    session: Session,
    Form(form): Form<CartForm>,
) -> Result<Redirect, AppError> {
    let item = field(&form.item, "An item name is required.")?;
    let cart: Vec<String> = session.get(CART).unwrap_or_default();
    if cart.len() >= MAX_CART_ITEMS {
        return Err(AppError::BadInput("The cart is full (20 items)."));
    }
    session.update(CART, move |cart: &mut Vec<String>| {
        if cart.len() < MAX_CART_ITEMS {
            cart.push(item.clone());
        }
    });
    Ok(Redirect::to("/"))
}

pub async fn logout(session: Session) -> Redirect {
    session.destroy();
    Redirect::to("/")
}

/// Ends every session of the signed-in user, on every node, this one included.
pub async fn logout_everywhere(
    session: Session,
    manager: SessionManager,
) -> Result<Redirect, AppError> {
    if let Some(user) = session.user() {
        manager.revoke_user(&user, Some(&session)).await?;
    }
    session.destroy();
    Ok(Redirect::to("/"))
}

/// One of the signed-in user's sessions, as `GET /api/sessions` lists them.
#[derive(Debug, Serialize)]
pub struct UserSessionView {
    pub session: String,
    pub created: u64,
    pub current: bool,
}

pub async fn api_sessions(
    session: Session,
    manager: SessionManager,
) -> Result<Json<Vec<UserSessionView>>, AppError> {
    let Some(user) = session.user() else {
        return Ok(Json(Vec::new()));
    };
    let current = session.short_id();
    let list = manager.sessions_of(&user).await?;
    Ok(Json(
        list.into_iter()
            .map(|s| UserSessionView {
                current: Some(s.id.short()) == current.as_deref(),
                session: s.id.short().to_string(),
                created: s.created,
            })
            .collect(),
    ))
}

/// The near-cache's counters and invalidation lag, for the benchmark and operators.
pub async fn near_cache(State(state): State<AppState>) -> Response {
    match &state.near_cache {
        Some(cache) => Json::<NearCacheStats>(cache.stats()).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            "this node runs without a near-cache (it needs --session-mode shared)\n",
        )
            .into_response(),
    }
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
