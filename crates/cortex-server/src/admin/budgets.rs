//! What users, organizations and teams share in the admin API: budgets on the wire (SPEC §18)
//! and bringing the key cache up to date after a change that re-versioned keys in another
//! object's transaction.

use cortex_domain::Budget;

use crate::state::AppState;
use cortex_gateway::error::ApiError;

/// The budget periods on the wire (SPEC §18).
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)] // Documentation only: never built.
pub enum BudgetPeriodName {
    Daily,
    Monthly,
    Total,
}

/// A budget as a create gives it: both fields or neither.
pub(super) fn new_budget(
    usd: Option<f64>,
    period: Option<&str>,
) -> Result<Option<Budget>, ApiError> {
    Budget::from_parts(usd, period).map_err(ApiError::invalid)
}

/// A budget as a change gives it: both absent leaves it, both `null` clears it, both set
/// replaces it; anything else is refused.
pub(super) fn budget_change(
    usd: Option<Option<f64>>,
    period: Option<Option<String>>,
) -> Result<Option<Option<Budget>>, ApiError> {
    match (usd, period) {
        (None, None) => Ok(None),
        (Some(usd), Some(period)) => new_budget(usd, period.as_deref()).map(Some),
        _ => Err(ApiError::invalid(
            "`budget_usd` and `budget_period` are given together or not at all",
        )),
    }
}

/// Applies a change to keys made in another object's transaction (a user's, an
/// organization's, a team's) to this instance's key cache at once, and tells the other
/// instances.
pub(super) async fn keys_changed(app: &AppState) -> Result<(), ApiError> {
    app.data.keys.refresh(&app.store).await?;
    app.announce(cortex_gateway::invalidation::Topic::Keys)
        .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cortex_domain::BudgetPeriod;

    #[derive(serde::Deserialize)]
    struct Change {
        #[serde(default, deserialize_with = "crate::admin::json::present")]
        budget_usd: Option<Option<f64>>,
        #[serde(default, deserialize_with = "crate::admin::json::present")]
        budget_period: Option<Option<String>>,
    }

    fn change(body: &str) -> Result<Option<Option<Budget>>, ApiError> {
        let change: Change = serde_json::from_str(body).unwrap();
        budget_change(change.budget_usd, change.budget_period)
    }

    #[test]
    fn a_change_leaves_clears_or_replaces_a_budget_and_refuses_half_of_one() {
        assert_eq!(change("{}").unwrap(), None);
        assert_eq!(
            change(r#"{"budget_usd":null,"budget_period":null}"#).unwrap(),
            Some(None)
        );
        assert_eq!(
            change(r#"{"budget_usd":2.5,"budget_period":"monthly"}"#).unwrap(),
            Some(Some(Budget {
                usd: 2.5,
                period: BudgetPeriod::Monthly
            }))
        );
        for half in [
            r#"{"budget_usd":2.5}"#,
            r#"{"budget_period":"daily"}"#,
            r#"{"budget_usd":null,"budget_period":"daily"}"#,
            r#"{"budget_usd":2.5,"budget_period":null}"#,
        ] {
            assert!(change(half).is_err(), "{half}");
        }
        assert!(new_budget(Some(-0.5), Some("total")).is_err());
        assert_eq!(new_budget(None, None).unwrap(), None);
    }
}
