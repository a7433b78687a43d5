//! Roles and `resource:action` permissions (SPEC §5 and the RBAC details of §14).
//!
//! A role is nothing but a fixed set of permissions; the admin API asks for a permission, never
//! for a role, so the matrix lives in exactly one place: [`Role::permissions`].

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Operator,
    Developer,
    Viewer,
    Billing,
}

/// Every permission an admin endpoint can require. `*Own` permissions are limited to objects
/// the principal owns; the data layer applies that filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    UsersRead,
    UsersWrite,
    KeysReadAll,
    KeysWriteAll,
    KeysReadOwn,
    KeysWriteOwn,
    /// Rotating another user's key hands its secret to the caller, who could then act as that
    /// user: only Admin. Revoking another's key needs only `KeysWriteAll`.
    KeysRotateAll,
    ProvidersRead,
    ProvidersWrite,
    ModelsRead,
    ModelsWrite,
    UsageReadAll,
    UsageReadOwn,
    AuditRead,
    ConfigExport,
    CheckRead,
    SettingsRead,
    /// Inference engines (SPEC §17): their definitions, state and logs.
    EnginesRead,
    /// Create, change, delete, start, stop and restart engines.
    EnginesWrite,
    /// Gateway policies (SPEC §21): an organization's cache and guardrail settings.
    PoliciesRead,
    /// Create, change and delete gateway policies.
    PoliciesWrite,
}

impl Permission {
    pub const ALL: [Permission; 21] = [
        Permission::UsersRead,
        Permission::UsersWrite,
        Permission::KeysReadAll,
        Permission::KeysWriteAll,
        Permission::KeysReadOwn,
        Permission::KeysWriteOwn,
        Permission::KeysRotateAll,
        Permission::ProvidersRead,
        Permission::ProvidersWrite,
        Permission::ModelsRead,
        Permission::ModelsWrite,
        Permission::UsageReadAll,
        Permission::UsageReadOwn,
        Permission::AuditRead,
        Permission::ConfigExport,
        Permission::CheckRead,
        Permission::SettingsRead,
        Permission::EnginesRead,
        Permission::EnginesWrite,
        Permission::PoliciesRead,
        Permission::PoliciesWrite,
    ];

    /// The `resource:action` name used in audit events and the OpenAPI document.
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::UsersRead => "users:read",
            Permission::UsersWrite => "users:write",
            Permission::KeysReadAll => "keys:read_all",
            Permission::KeysWriteAll => "keys:write_all",
            Permission::KeysReadOwn => "keys:read_own",
            Permission::KeysWriteOwn => "keys:write_own",
            Permission::KeysRotateAll => "keys:rotate_all",
            Permission::ProvidersRead => "providers:read",
            Permission::ProvidersWrite => "providers:write",
            Permission::ModelsRead => "models:read",
            Permission::ModelsWrite => "models:write",
            Permission::UsageReadAll => "usage:read_all",
            Permission::UsageReadOwn => "usage:read_own",
            Permission::AuditRead => "audit:read",
            Permission::ConfigExport => "config:export",
            Permission::CheckRead => "check:read",
            Permission::SettingsRead => "settings:read",
            Permission::EnginesRead => "engines:read",
            Permission::EnginesWrite => "engines:write",
            Permission::PoliciesRead => "policies:read",
            Permission::PoliciesWrite => "policies:write",
        }
    }
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Admin,
        Role::Operator,
        Role::Developer,
        Role::Viewer,
        Role::Billing,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Developer => "developer",
            Role::Viewer => "viewer",
            Role::Billing => "billing",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == text)
    }

    /// The one RBAC matrix. Exhaustive on purpose: a new role must decide every permission.
    pub fn permissions(self) -> &'static [Permission] {
        use Permission::*;
        match self {
            Role::Admin => &Permission::ALL,
            Role::Operator => &[
                UsersRead,
                KeysReadAll,
                KeysWriteAll,
                KeysReadOwn,
                KeysWriteOwn,
                ProvidersRead,
                ProvidersWrite,
                ModelsRead,
                ModelsWrite,
                UsageReadAll,
                UsageReadOwn,
                AuditRead,
                ConfigExport,
                CheckRead,
                SettingsRead,
                EnginesRead,
                EnginesWrite,
                PoliciesRead,
                PoliciesWrite,
            ],
            Role::Developer => &[KeysReadOwn, KeysWriteOwn, ModelsRead, UsageReadOwn],
            Role::Viewer => &[
                UsersRead,
                KeysReadAll,
                KeysReadOwn,
                ProvidersRead,
                ModelsRead,
                UsageReadAll,
                UsageReadOwn,
                AuditRead,
                ConfigExport,
                CheckRead,
                SettingsRead,
                EnginesRead,
                PoliciesRead,
            ],
            Role::Billing => &[ModelsRead, UsageReadAll, UsageReadOwn],
        }
    }

    pub fn permits(self, permission: Permission) -> bool {
        self.permissions().contains(&permission)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for role in Role::ALL {
            assert_eq!(Role::parse(role.as_str()), Some(role));
        }
        assert_eq!(Role::parse("Admin"), None);
        assert_eq!(Role::parse("root"), None);
    }

    #[test]
    fn only_admin_manages_users() {
        for role in Role::ALL {
            assert_eq!(
                role.permits(Permission::UsersWrite),
                role == Role::Admin,
                "{role:?}"
            );
        }
    }

    #[test]
    fn only_admin_receives_the_secret_of_another_users_key() {
        for role in Role::ALL {
            assert_eq!(
                role.permits(Permission::KeysRotateAll),
                role == Role::Admin,
                "{role:?}"
            );
        }
        assert!(Role::Operator.permits(Permission::KeysWriteAll));
    }

    #[test]
    fn viewer_and_billing_change_nothing() {
        let writes = [
            Permission::UsersWrite,
            Permission::KeysWriteAll,
            Permission::KeysWriteOwn,
            Permission::ProvidersWrite,
            Permission::ModelsWrite,
            Permission::EnginesWrite,
            Permission::PoliciesWrite,
        ];
        for role in [Role::Viewer, Role::Billing] {
            for permission in writes {
                assert!(!role.permits(permission), "{role:?} {permission:?}");
            }
        }
    }

    #[test]
    fn developer_and_billing_do_not_see_providers() {
        assert!(!Role::Developer.permits(Permission::ProvidersRead));
        assert!(!Role::Billing.permits(Permission::ProvidersRead));
        assert!(Role::Developer.permits(Permission::ModelsRead));
        assert!(Role::Billing.permits(Permission::ModelsRead));
    }

    #[test]
    fn admin_and_operator_manage_engines_and_viewer_reads_them() {
        for role in Role::ALL {
            assert_eq!(
                role.permits(Permission::EnginesWrite),
                matches!(role, Role::Admin | Role::Operator),
                "{role:?}"
            );
            assert_eq!(
                role.permits(Permission::EnginesRead),
                matches!(role, Role::Admin | Role::Operator | Role::Viewer),
                "{role:?}"
            );
        }
    }

    #[test]
    fn admin_and_operator_manage_policies_and_viewer_reads_them() {
        for role in Role::ALL {
            assert_eq!(
                role.permits(Permission::PoliciesWrite),
                matches!(role, Role::Admin | Role::Operator),
                "{role:?}"
            );
            assert_eq!(
                role.permits(Permission::PoliciesRead),
                matches!(role, Role::Admin | Role::Operator | Role::Viewer),
                "{role:?}"
            );
        }
    }

    #[test]
    fn permission_names_are_unique() {
        let names: std::collections::HashSet<_> =
            Permission::ALL.iter().map(|p| p.as_str()).collect();
        assert_eq!(names.len(), Permission::ALL.len());
    }
}
