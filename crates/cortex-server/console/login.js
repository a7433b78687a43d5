// Login page: password, then a TOTP or recovery code when the account has MFA.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("login-form");
  const error = document.getElementById("login-error");
  const mfa = document.getElementById("mfa");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    const body = {
      username: form.username.value.trim(),
      password: form.password.value,
    };
    if (!mfa.hidden && form.totp.value.trim()) body.totp_code = form.totp.value.trim();
    if (!mfa.hidden && form.recovery.value.trim()) body.recovery_code = form.recovery.value.trim();
    let response;
    try {
      response = await fetch("/admin/auth/login", {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body),
      });
    } catch (_) {
      error.textContent = "The server cannot be reached.";
      return;
    }
    const answer = await response.json().catch(() => ({}));
    if (response.ok) {
      window.location.assign(answer.must_change_password ? "/ui/#/password" : "/ui/");
      return;
    }
    const code = answer.error && answer.error.code;
    if (code === "mfa_required") {
      mfa.hidden = false;
      error.textContent = "Enter the code from your authenticator app.";
      form.totp.focus();
    } else if (response.status === 429) {
      error.textContent = "Too many attempts. Wait a minute and try again.";
    } else {
      error.textContent = "Wrong username, password or code.";
    }
  });
});
