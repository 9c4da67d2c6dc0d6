//! Request and response bodies shared by the API areas.

use poem_openapi::{Enum, Object};

use crate::auth::{Role, SessionRecord, UserView};

/// A role.
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
#[oai(rename_all = "lowercase")]
pub enum RoleDto {
    Admin,
    User,
    Guest,
}

impl From<Role> for RoleDto {
    fn from(r: Role) -> Self {
        match r {
            Role::Admin => RoleDto::Admin,
            Role::User => RoleDto::User,
            Role::Guest => RoleDto::Guest,
        }
    }
}

impl From<RoleDto> for Role {
    fn from(r: RoleDto) -> Self {
        match r {
            RoleDto::Admin => Role::Admin,
            RoleDto::User => Role::User,
            RoleDto::Guest => Role::Guest,
        }
    }
}

/// A user as the Miauflix client sees it.
#[derive(Object, Clone, Debug)]
#[oai(rename_all = "camelCase")]
pub struct UserDto {
    pub id: String,
    pub email: String,
    pub display_name: String,
    pub role: RoleDto,
}

impl From<&UserView> for UserDto {
    fn from(u: &UserView) -> Self {
        UserDto { id: u.id.clone(), email: u.email.clone(), display_name: u.display_name.clone(), role: u.role.into() }
    }
}

/// A user as an admin sees it.
#[derive(Object, Clone, Debug)]
#[oai(rename_all = "camelCase")]
pub struct AdminUserDto {
    pub id: String,
    pub email: String,
    pub display_name: String,
    pub role: RoleDto,
    pub disabled: bool,
    /// Unix seconds.
    pub created_at: i64,
}

impl From<&UserView> for AdminUserDto {
    fn from(u: &UserView) -> Self {
        AdminUserDto {
            id: u.id.clone(),
            email: u.email.clone(),
            display_name: u.display_name.clone(),
            role: u.role.into(),
            disabled: u.disabled,
            created_at: u.created_at,
        }
    }
}

/// A session as listed to its owner or an admin.
#[derive(Object, Clone, Debug)]
#[oai(rename_all = "camelCase")]
pub struct SessionInfoDto {
    pub id: String,
    /// `browser` or `api`.
    pub kind: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Last login or refresh, Unix seconds.
    pub last_used_at: i64,
    pub expires_at: i64,
    pub ip: String,
    pub user_agent: String,
    /// Whether this is the session making the request.
    pub current: bool,
}

impl SessionInfoDto {
    pub fn from_record(s: &SessionRecord, current: Option<&str>) -> Self {
        SessionInfoDto {
            id: s.id.clone(),
            kind: match s.kind {
                crate::auth::SessionKind::Browser => "browser".into(),
                crate::auth::SessionKind::Api => "api".into(),
            },
            created_at: s.created_at,
            last_used_at: s.last_used_at,
            expires_at: s.expires_at,
            ip: s.ip.clone(),
            user_agent: s.user_agent.clone(),
            current: current == Some(s.id.as_str()),
        }
    }
}

/// A one-sentence answer.
#[derive(Object, Clone, Debug)]
pub struct MessageDto {
    pub message: String,
}

/// An answer that says how many sessions were revoked.
#[derive(Object, Clone, Debug)]
#[oai(rename_all = "camelCase")]
pub struct RevokedDto {
    pub message: String,
    pub revoked_sessions: u32,
}
