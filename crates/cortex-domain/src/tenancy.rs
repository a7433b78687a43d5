//! Organizations (tenants), which part of the data a caller may see, and budgets (SPEC §18).
//!
//! Every key, user, usage record and audit event belongs to one organization. What a caller may
//! see is a [`Tenant`]: every organization (admins of [`DEFAULT_ORG`], and the system itself:
//! the command line, the key cache, verification) or one. The rule that decides it lives here,
//! once ([`Tenant::for_member`]); the store applies the value in its SQL, so a handler cannot
//! forget it.

use std::fmt;
use std::str::FromStr;

use crate::role::Role;

/// The organization the first admin, and every row from before organizations existed, belong
/// to. Its admins manage all organizations; it cannot be deleted.
pub const DEFAULT_ORG: &str = "default";

/// Which organizations' objects a query may see.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Tenant {
    /// Every organization: admins of [`DEFAULT_ORG`], and the system (CLI, caches, checks).
    All,
    /// One organization's objects only; another's are not found.
    Org(String),
}

impl Tenant {
    /// The scope of a user of `org_id` with `role`: everything only for admins of the default
    /// organization; everyone else, the default organization's other roles included, their own.
    pub fn for_member(org_id: &str, role: Role) -> Tenant {
        if org_id == DEFAULT_ORG && role == Role::Admin {
            Tenant::All
        } else {
            Tenant::Org(org_id.to_owned())
        }
    }

    /// The organization to filter on; `None` for every organization. The store binds this as
    /// the parameter of `($n IS NULL OR org_id = $n)`.
    pub fn org_filter(&self) -> Option<&str> {
        match self {
            Tenant::All => None,
            Tenant::Org(id) => Some(id),
        }
    }

    /// Whether an object of `org_id` is visible in this scope.
    pub fn sees(&self, org_id: &str) -> bool {
        match self {
            Tenant::All => true,
            Tenant::Org(own) => own == org_id,
        }
    }

    pub fn is_all(&self) -> bool {
        matches!(self, Tenant::All)
    }
}

/// How a budget's spend is counted: per UTC day, per UTC calendar month, or ever.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BudgetPeriod {
    Daily,
    Monthly,
    Total,
}

impl BudgetPeriod {
    pub const ALL: [BudgetPeriod; 3] = [
        BudgetPeriod::Daily,
        BudgetPeriod::Monthly,
        BudgetPeriod::Total,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BudgetPeriod::Daily => "daily",
            BudgetPeriod::Monthly => "monthly",
            BudgetPeriod::Total => "total",
        }
    }
}

impl fmt::Display for BudgetPeriod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The text was not one of the period names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownBudgetPeriod;

impl fmt::Display for UnknownBudgetPeriod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("`budget_period` must be one of daily, monthly, total")
    }
}

impl std::error::Error for UnknownBudgetPeriod {}

impl FromStr for BudgetPeriod {
    type Err = UnknownBudgetPeriod;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        BudgetPeriod::ALL
            .into_iter()
            .find(|p| p.as_str() == text)
            .ok_or(UnknownBudgetPeriod)
    }
}

/// A spend cap: at most `usd` per `period`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    pub usd: f64,
    pub period: BudgetPeriod,
}

/// The largest budget accepted, so sums of budgets and spend stay exact in an `f64`.
pub const MAX_BUDGET_USD: f64 = 1_000_000_000.0;

impl Budget {
    /// A budget from the two optional wire fields: both or neither (`Ok(None)`), the amount
    /// finite, at least 0 and at most [`MAX_BUDGET_USD`], the period one of the names. The
    /// message names the field and the rule.
    pub fn from_parts(usd: Option<f64>, period: Option<&str>) -> Result<Option<Budget>, String> {
        match (usd, period) {
            (None, None) => Ok(None),
            (Some(_), None) | (None, Some(_)) => {
                Err("`budget_usd` and `budget_period` are given together or not at all".into())
            }
            (Some(usd), Some(period)) => {
                if !usd.is_finite() || !(0.0..=MAX_BUDGET_USD).contains(&usd) {
                    return Err(format!(
                        "`budget_usd` must be a number from 0 to {MAX_BUDGET_USD}"
                    ));
                }
                let period = period.parse::<BudgetPeriod>().map_err(|e| e.to_string())?;
                Ok(Some(Budget { usd, period }))
            }
        }
    }
}

/// Checks an organization or team name: 1 to 64 letters, digits, '.', '_', '-' or ' ', not
/// starting or ending with a space. The message names the field and the rule.
pub fn check_tenant_name(name: &str) -> Result<&str, &'static str> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(' ')
        && !name.ends_with(' ')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._- ".contains(&b));
    if valid {
        Ok(name)
    } else {
        Err("`name` must be 1-64 letters, digits, '.', '_', '-' or inner spaces")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_admins_of_the_default_organization_see_everything() {
        assert_eq!(Tenant::for_member(DEFAULT_ORG, Role::Admin), Tenant::All);
        for role in [Role::Operator, Role::Developer, Role::Viewer, Role::Billing] {
            assert_eq!(
                Tenant::for_member(DEFAULT_ORG, role),
                Tenant::Org(DEFAULT_ORG.into())
            );
        }
        for role in Role::ALL {
            assert_eq!(Tenant::for_member("acme", role), Tenant::Org("acme".into()));
        }
        assert!(Tenant::All.sees("acme"));
        assert!(Tenant::Org("acme".into()).sees("acme"));
        assert!(!Tenant::Org("acme".into()).sees("globex"));
        assert_eq!(Tenant::All.org_filter(), None);
        assert_eq!(Tenant::Org("acme".into()).org_filter(), Some("acme"));
    }

    #[test]
    fn periods_round_trip_and_unknown_names_are_refused() {
        for period in BudgetPeriod::ALL {
            assert_eq!(period.as_str().parse::<BudgetPeriod>(), Ok(period));
        }
        assert!("weekly".parse::<BudgetPeriod>().is_err());
        assert!("Daily".parse::<BudgetPeriod>().is_err());
    }

    #[test]
    fn budgets_are_both_fields_or_neither_and_bounded() {
        assert_eq!(Budget::from_parts(None, None), Ok(None));
        assert_eq!(
            Budget::from_parts(Some(10.0), Some("monthly")),
            Ok(Some(Budget {
                usd: 10.0,
                period: BudgetPeriod::Monthly
            }))
        );
        assert!(Budget::from_parts(Some(0.0), Some("total")).is_ok());
        for (usd, period) in [
            (Some(1.0), None),
            (None, Some("daily")),
            (Some(-1.0), Some("daily")),
            (Some(f64::NAN), Some("daily")),
            (Some(f64::INFINITY), Some("daily")),
            (Some(2e9), Some("daily")),
            (Some(1.0), Some("weekly")),
        ] {
            assert!(
                Budget::from_parts(usd, period).is_err(),
                "{usd:?} {period:?}"
            );
        }
    }

    #[test]
    fn tenant_names_are_short_and_plain() {
        assert!(check_tenant_name("Acme Research").is_ok());
        assert!(check_tenant_name("team-1.a_b").is_ok());
        for bad in ["", " x", "x ", "a/b", "<script>", &"a".repeat(65)] {
            assert!(check_tenant_name(bad).is_err(), "{bad:?}");
        }
    }
}
