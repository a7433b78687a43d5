// Login page: single sign-on when the server offers it; password, then a TOTP or recovery code
// when the account has MFA.
"use strict";

// What a refused single sign-on's code means, in words; an unknown code is shown as a code.
const SSO_ERRORS = {
  login_expired: "The sign-in took too long or was already used. Start again.",
  state_mismatch: "The sign-in did not start in this browser. Start again.",
  too_many_attempts: "Too many sign-in attempts. Wait a minute and try again.",
  provider_refused: "The identity provider did not sign you in.",
  provider_unavailable: "The identity provider cannot be reached. Try again later.",
  account_disabled: "Your account is disabled.",
  no_role: "Your account at the identity provider gives you no role here. Ask an administrator.",
  unknown_role: "Your account at the identity provider names a role that does not exist here. Ask an administrator.",
  unknown_organization: "Your account at the identity provider names an organization that does not exist here. Ask an administrator.",
  username_taken: "Another account already uses your username. Ask an administrator.",
  organization_changed: "Your organization changed at the identity provider. Ask an administrator to move your account.",
};

async function signInMethods() {
  const error = document.getElementById("sso-error");
  const code = new URLSearchParams(window.location.search).get("sso_error");
  if (code) {
    error.textContent = SSO_ERRORS[code] || `Single sign-on failed (${code.replace(/[^a-z_]/g, "")}). Try again or ask an administrator.`;
  }
  try {
    const methods = await (await fetch("/admin/auth/methods", { credentials: "same-origin" })).json();
    if (methods.passkeys) document.getElementById("passkey-submit").hidden = false;
    if (methods.sso) {
      document.getElementById("sso-login").textContent = "Sign in with " + methods.sso.name;
      document.getElementById("sso").hidden = false;
      if (!methods.password) document.getElementById("sso-or").textContent = "or, for break-glass administrators, with a password";
    }
  } catch (_) {
    // Without the list the password form still works.
  }
}

// A passkey sign-in: with the password when one was typed (a second factor), else the passkey
// alone (for accounts that chose it). The options and the assertion travel as WebAuthn's JSON.
async function passkeySignIn(form, error) {
  const body = { username: form.username.value.trim() };
  if (!body.username) {
    error.textContent = "Type your username first.";
    form.username.focus();
    return;
  }
  if (form.password.value) body.password = form.password.value;
  const post = (path, payload) => fetch(path, {
    method: "POST", credentials: "same-origin", headers: { "Content-Type": "application/json" }, body: JSON.stringify(payload),
  });
  let response = await post("/admin/auth/webauthn/start", body);
  let answer = await response.json().catch(() => ({}));
  if (!response.ok) {
    const code = answer.error && answer.error.code;
    error.textContent = code === "invalid_request" ? answer.error.message : response.status === 429
      ? "Too many attempts. Wait a minute and try again." : "Wrong username or password.";
    return;
  }
  let credential;
  try {
    credential = await navigator.credentials.get({ publicKey: PublicKeyCredential.parseRequestOptionsFromJSON(answer.options.publicKey) });
  } catch (e) {
    error.textContent = "No passkey was used (" + (e.name || "error") + ").";
    return;
  }
  response = await post("/admin/auth/webauthn/finish", { challenge_id: answer.challenge_id, credential: credential.toJSON() });
  answer = await response.json().catch(() => ({}));
  if (response.ok) {
    window.location.assign(answer.must_change_password ? "/ui/#/password" : "/ui/");
    return;
  }
  const code = answer.error && answer.error.code;
  error.textContent = code === "local_login_disabled" ? "Password and passkey sign-in are off: use single sign-on."
    : response.status === 429 ? "Too many attempts. Wait a minute and try again." : "The passkey was not accepted.";
}

document.addEventListener("DOMContentLoaded", () => {
  signInMethods();
  document.getElementById("passkey-submit").addEventListener("click", () => {
    const form = document.getElementById("login-form");
    const error = document.getElementById("login-error");
    error.textContent = "";
    passkeySignIn(form, error);
  });
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
      error.textContent = document.getElementById("passkey-submit").hidden
        ? "Enter the code from your authenticator app."
        : "Enter the code from your authenticator app, or use a passkey.";
      form.totp.focus();
    } else if (code === "passkey_required") {
      error.textContent = "This account signs in with a passkey: choose “Use a passkey”.";
      form.password.value = "";
    } else if (code === "local_login_disabled") {
      error.textContent = "Password sign-in is off: use single sign-on.";
    } else if (response.status === 429) {
      error.textContent = "Too many attempts. Wait a minute and try again.";
    } else {
      error.textContent = "Wrong username, password or code.";
    }
  });
});
