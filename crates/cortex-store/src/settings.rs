//! Small named values (sealed signing keys, bootstrap markers).

use sqlx::Row;

use crate::{Store, StoreResult};

impl Store {
    pub async fn get_setting(&self, name: &str) -> StoreResult<Option<String>> {
        let row = sqlx::query("SELECT value FROM settings WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| r.try_get::<String, _>("value"))
            .transpose()
            .map_err(Into::into)
    }

    /// Inserts the value unless one exists; returns the value that is stored afterwards. Used
    /// for generated keys, so two instances starting together agree on one.
    pub async fn put_setting_if_absent(
        &self,
        name: &str,
        value: &str,
        now_millis: i64,
    ) -> StoreResult<String> {
        sqlx::query("INSERT INTO settings (name, value, updated_at) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING")
            .bind(name)
            .bind(value)
            .bind(now_millis)
            .execute(&self.pool)
            .await?;
        self.get_setting(name)
            .await?
            .ok_or(crate::StoreError::NotFound)
    }

    pub async fn put_setting(&self, name: &str, value: &str, now_millis: i64) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO settings (name, value, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
        )
        .bind(name)
        .bind(value)
        .bind(now_millis)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
