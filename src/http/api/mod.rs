//! poem-openapi endpoints, one file per area; every one is in the OpenAPI document.

pub mod system;

use std::sync::Arc;

use super::AppState;

/// Every API area, combined for the OpenAPI service.
pub type Apis = system::SystemApi;

pub fn apis(state: Arc<AppState>) -> Apis {
    system::SystemApi { state }
}

/// Tags that group operations in the document.
#[derive(poem_openapi::Tags)]
pub enum ApiTags {
    /// Liveness, readiness and status.
    System,
}
