//! The poem application: shared state, the middleware stack and the routes.
//! This is the only layer that knows HTTP; it turns domain modules into endpoints.

pub mod api;
pub mod context;
pub mod credentials;
pub mod middleware;
pub mod problem;
pub mod proxy;
pub mod redirect;
pub mod serve;
pub mod spec;
pub mod tunnel;
pub mod ui;
pub mod upstream_headers;

use std::sync::Arc;
use std::time::Instant;

use poem::endpoint::make_sync;
use poem::web::{Html, Redirect};
use poem::{Endpoint, EndpointExt, Route, get};
use poem_openapi::OpenApiService;

use crate::core::Core;

/// What every endpoint may reach.
/// The [`Core`] (config, store, keyring, audit, auth; reached through `Deref`) plus what
/// only the listeners need.
pub struct AppState {
    pub core: Core,
    pub limits: Arc<crate::ratelimit::RateLimits>,
    pub proxy: Arc<proxy::Proxy>,
    /// The core's VPN supervisor, which a serving core always has.
    pub vpn: Arc<dyn crate::vpn::VpnStatus>,
    pub started: Instant,
    /// What the main listener serves (mode, certificate, renewal state).
    pub tls: Arc<crate::tls::status::TlsStatus>,
    /// Bearer token a Prometheus scraper may present at `/metrics`.
    pub metrics_token: Option<zeroize::Zeroizing<String>>,
}

impl std::ops::Deref for AppState {
    type Target = Core;
    fn deref(&self) -> &Core {
        &self.core
    }
}

/// The OpenAPI service with every documented endpoint.
pub fn openapi_service(state: Arc<AppState>) -> OpenApiService<api::Apis, ()> {
    OpenApiService::new(api::apis(state), "miauflix-gate", env!("CARGO_PKG_VERSION")).description(
        "The security gate in front of a Miauflix media server: auth, TLS, rate limits, audit, VPN supervision.",
    )
}

/// The OpenAPI document as pretty JSON, as committed in `assets/openapi.json`: poem-openapi's
/// derive plus the problem answers of [`spec::document_problems`].
pub fn openapi_json(state: Arc<AppState>) -> String {
    documented(&openapi_service(state))
}

fn documented(api: &OpenApiService<api::Apis, ()>) -> String {
    let mut doc: serde_json::Value = serde_json::from_str(&api.spec()).expect("poem-openapi writes JSON");
    spec::document_problems(&mut doc);
    serde_json::to_string_pretty(&doc).expect("a JSON value serialises")
}

/// The full application with its middleware stack.
pub fn build_app(state: Arc<AppState>) -> impl Endpoint<Output = poem::Response> {
    let policy = Arc::new(middleware::EdgePolicy::new(state.clone()));
    let api = openapi_service(state.clone());
    let document = documented(&api);
    // Swagger UI embeds the document; poem-openapi's page is given the documented one.
    let docs_html = api.swagger_ui_html().replacen(&api.spec(), &document, 1);
    let spec = make_sync(move |_| poem::Response::builder().content_type("application/json").body(document.clone()));
    let docs = Route::new().at("/", get(make_sync(move |_| Html(docs_html.clone()))));
    Route::new()
        .at("/admin", get(ui::admin))
        .at("/admin/*path", get(ui::admin))
        .at("/api/openapi.json", get(spec))
        .nest("/api/docs", docs)
        .nest("/", api)
        .data(state)
        // `/` (when no catch-all route took it): here, since the API nested at `/` shadows a
        // route for `/` in poem's router.
        .around(|ep, req| async move {
            if req.uri().path() == "/" && matches!(*req.method(), poem::http::Method::GET | poem::http::Method::HEAD) {
                return Ok(poem::IntoResponse::into_response(Redirect::see_other("/admin/")));
            }
            ep.call(req).await
        })
        .with(middleware::RequestContext::new(policy))
}
