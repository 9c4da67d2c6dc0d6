//! Users, roles, sessions and the first-start setup. Knows nothing of HTTP.

pub mod setup;
