// A real OpenID Provider for Cortex's single sign-on tests: node-oidc-provider (a certified
// implementation) on a loopback port, with a plain login form (username only: the tests are
// about what Cortex does with the provider's answers, not about the provider's passwords) and
// consent granted at once (a first-party client).
//
//   node oidc-provider.mjs <config.json>
//
// config.json: { "client_id", "client_secret", "redirect_uris": [...],
//                "post_logout_redirect_uris": [...], "accounts": { "<sub>": { <claims> } } }
// Prints `issuer=http://127.0.0.1:<port>` on stdout once it listens. `POST /test/accounts`
// with `{ "<sub>": { <claims> } }` adds or replaces accounts while it runs.
import { createServer } from "node:http";
import { generateKeyPairSync, randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import Provider from "oidc-provider";

const config = JSON.parse(readFileSync(process.argv[2], "utf8"));
const accounts = new Map(Object.entries(config.accounts || {}));

const escape = (text) => String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function page(res, title, body) {
  res.statusCode = 200;
  res.setHeader("content-type", "text/html; charset=utf-8");
  res.end(`<!doctype html><html lang="en"><head><meta charset="utf-8"><title>${escape(title)}</title></head><body>${body}</body></html>`);
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    let data = "";
    req.on("data", (chunk) => { data += chunk; if (data.length > 65536) req.destroy(); });
    req.on("end", () => resolve(data));
    req.on("error", reject);
  });
}

// The signing key is made for this run: RS256, as most providers sign.
const { privateKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
const jwk = { ...privateKey.export({ format: "jwk" }), kid: "run-" + randomBytes(6).toString("hex"), use: "sig", alg: "RS256" };

const server = createServer();
await new Promise((done) => server.listen(config.port || 0, "127.0.0.1", done));
const issuer = `http://127.0.0.1:${server.address().port}`;

const provider = new Provider(issuer, {
  clients: [{
    client_id: config.client_id,
    client_secret: config.client_secret,
    redirect_uris: config.redirect_uris,
    post_logout_redirect_uris: config.post_logout_redirect_uris || [],
    grant_types: ["authorization_code"],
    response_types: ["code"],
    token_endpoint_auth_method: "client_secret_basic",
  }],
  jwks: { keys: [jwk] },
  cookies: { keys: [randomBytes(16).toString("hex")] },
  pkce: { required: () => true },
  // Scope claims go into the ID token itself, which is where Cortex reads them.
  conformIdTokenClaims: false,
  claims: {
    openid: ["sub"],
    profile: ["preferred_username", "name"],
    email: ["email", "email_verified"],
    groups: ["groups"],
    cortex: ["cortex_role", "cortex_org"],
  },
  // Every page the provider renders is plain and local: its defaults load a web font from the
  // internet, and the tests touch nothing but loopback.
  features: {
    devInteractions: { enabled: false },
    rpInitiatedLogout: {
      enabled: true,
      logoutSource: async (ctx, form) => {
        ctx.body = `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Sign out</title></head><body>
          <h1>Sign out of the test identity provider?</h1>${form}
          <button id="idp-logout" type="submit" form="op.logoutForm" value="yes" name="logout">Yes, sign me out</button>
          <button type="submit" form="op.logoutForm">No, stay signed in</button></body></html>`;
      },
      postLogoutSuccessSource: async (ctx) => {
        ctx.body = `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Signed out</title></head><body><h1 id="idp-signed-out">Signed out</h1></body></html>`;
      },
    },
  },
  renderError: async (ctx, out) => {
    ctx.type = "html";
    ctx.body = `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Error</title></head><body><h1 id="idp-error">${escape(out.error)}</h1><p>${escape(out.error_description || "")}</p></body></html>`;
  },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  findAccount: (ctx, sub) => accounts.has(sub)
    ? { accountId: sub, claims: async () => ({ sub, ...accounts.get(sub) }) }
    : undefined,
});
provider.on("server_error", (ctx, error) => process.stderr.write(`server_error: ${error.stack}\n`));

async function interaction(req, res) {
  const details = await provider.interactionDetails(req, res);
  const { uid, prompt, params, session } = details;
  if (req.method === "GET" && prompt.name === "login") {
    return page(res, "Sign in", `<h1>Test identity provider</h1>
      <form method="post" action="/interaction/${escape(uid)}/login">
        <label for="login">Username</label> <input id="login" name="login" autofocus>
        <button id="idp-submit" type="submit">Sign in</button>
      </form>`);
  }
  if (req.method === "POST" && req.url.endsWith("/login")) {
    const login = new URLSearchParams(await readBody(req)).get("login") || "";
    if (!accounts.has(login)) {
      return page(res, "Sign in", `<p id="idp-error">Unknown user</p><a href="/interaction/${escape(uid)}">Back</a>`);
    }
    return provider.interactionFinished(req, res, { login: { accountId: login } }, { mergeWithLastSubmission: false });
  }
  if (prompt.name === "consent") {
    const grant = details.grantId
      ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
    if (prompt.details.missingOIDCScope) grant.addOIDCScope(prompt.details.missingOIDCScope.join(" "));
    if (prompt.details.missingOIDCClaims) grant.addOIDCClaims(prompt.details.missingOIDCClaims);
    for (const [indicator, scopes] of Object.entries(prompt.details.missingResourceScopes || {})) {
      grant.addResourceScope(indicator, scopes.join(" "));
    }
    const grantId = await grant.save();
    return provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
  }
  res.statusCode = 400;
  res.end("unexpected interaction");
}

const callback = provider.callback();
server.on("request", async (req, res) => {
  try {
    if (req.url.startsWith("/interaction/")) return await interaction(req, res);
    if (req.url === "/test/accounts" && req.method === "POST") {
      for (const [sub, claims] of Object.entries(JSON.parse(await readBody(req)))) accounts.set(sub, claims);
      res.statusCode = 204;
      return res.end();
    }
    return callback(req, res);
  } catch (error) {
    process.stderr.write(`interaction failed: ${error.stack}\n`);
    res.statusCode = 500;
    res.end("interaction failed");
  }
});
process.stdout.write(`issuer=${issuer}\n`);
process.on("SIGTERM", () => server.close(() => process.exit(0)));
