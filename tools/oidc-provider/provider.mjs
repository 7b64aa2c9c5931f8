// A ProConnect-style OpenID provider for Rempart's federation tests: the real
// `oidc-provider` package, configured like ProConnect (code flow with PKCE,
// scopes openid email given_name usual_name, acr/amr in the id_token, signed
// userinfo), with one difference: there is no login page. Whoever drives the
// browser side (a test with a plain HTTP client) posts which person logs in
// and with which acr/amr, so single-factor and multi-factor logins can both
// be produced on demand.
//
//   node provider.mjs --port 0 --redirect-uri http://127.0.0.1:9/callback [--exit-with-stdin]
//
// prints one line, `listening http://127.0.0.1:PORT`, once it accepts
// requests; that URL is the issuer. The redirect URI may also come from
// OIDC_REDIRECT_URI.
//
// Login, after the relying party's authorization URL answered 303 to
// /interaction/UID (keep the cookies it sets):
//   POST /interaction/UID/login  {"login": "camille.roux", "acr": "eidas2", "amr": ["pwd", "totp"]}
// answers 303 to the provider's resume URL, which answers 303 to the
// redirect URI with code, state and iss.
//
// More relying parties can register themselves (RFC 7591, POST /reg, open,
// no initial access token): a test whose relying party only knows its
// redirect URI once its server is listening registers a client of its own.
//
// Synthetic people and secrets only: this provider exists for tests.

import { createServer } from 'node:http';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { parseArgs } from 'node:util';

import Provider from 'oidc-provider';

const { values: args } = parseArgs({
  options: {
    port: { type: 'string', default: '0' },
    'redirect-uri': { type: 'string', default: process.env.OIDC_REDIRECT_URI },
    'exit-with-stdin': { type: 'boolean', default: false },
  },
});
const redirectUri = args['redirect-uri'];
if (!redirectUri) {
  console.error('provider.mjs: --redirect-uri (or OIDC_REDIRECT_URI) is required');
  process.exit(2);
}

// The two clients. `rempart` is the relying party under test; `other-service`
// is another service of the same federation, whose id_tokens `rempart` must
// refuse (wrong audience).
const CLIENTS = [
  { client_id: 'rempart', client_secret: 'rempart-test-secret' },
  { client_id: 'other-service', client_secret: 'other-service-test-secret' },
];

// Synthetic agents, by login. `sub` is opaque and stable, as ProConnect's is.
const PEOPLE = {
  'camille.roux': {
    sub: '5d2c7c3e-6f0b-4f7e-9b1a-2f8e1c4d9a01',
    email: 'camille.roux@cap-emploi-synth.example',
    given_name: 'Camille',
    usual_name: 'Roux',
  },
  'yanis.benali': {
    sub: 'a9e41b07-3c55-4d2e-8f60-7b9d0c1e2f34',
    email: 'yanis.benali@mission-locale-synth.example',
    given_name: 'Yanis',
    usual_name: 'Benali',
  },
};
const bySub = new Map(Object.values(PEOPLE).map((p) => [p.sub, p]));

// ProConnect's acr values: eidas1 (historical, no meaning), the eIDAS levels
// relayed from other identity providers, and ProConnect's own assurance URIs.
const ACR_VALUES = [
  'eidas1',
  'eidas2',
  'eidas3',
  'https://proconnect.gouv.fr/assurance/self-asserted',
  'https://proconnect.gouv.fr/assurance/self-asserted-2fa',
  'https://proconnect.gouv.fr/assurance/consistency-checked',
  'https://proconnect.gouv.fr/assurance/consistency-checked-2fa',
];

// Listen first: with --port 0 the issuer URL is only known once the port is.
const server = createServer();
await new Promise((resolve) => server.listen(Number(args.port), '127.0.0.1', resolve));
const issuer = `http://127.0.0.1:${server.address().port}`;

// A fresh RSA key per run; RS256 for id_tokens and userinfo, as ProConnect
// can be configured to do.
const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = { ...privateKey.export({ format: 'jwk' }), kid: 'test-rs256', alg: 'RS256', use: 'sig' };

const provider = new Provider(issuer, {
  clients: CLIENTS.map((c) => ({
    ...c,
    redirect_uris: [redirectUri],
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
    id_token_signed_response_alg: 'RS256',
    userinfo_signed_response_alg: 'RS256',
  })),
  jwks: { keys: [signingKey] },
  cookies: { keys: [randomBytes(32).toString('base64url')] },
  acrValues: ACR_VALUES,
  // As with ProConnect: acr in every id_token, amr only when the relying
  // party asks for it (claims parameter), the person's attributes from
  // userinfo.
  scopes: ['openid', 'email', 'given_name', 'usual_name'],
  claims: {
    amr: null,
    auth_time: null,
    openid: ['sub', 'acr'],
    email: ['email'],
    given_name: ['given_name'],
    usual_name: ['usual_name'],
  },
  responseTypes: ['code'],
  // Short lives, set explicitly (the defaults print a notice on stdout).
  ttl: {
    AccessToken: 600,
    AuthorizationCode: 60,
    Grant: 600,
    IdToken: 3600,
    Interaction: 600,
    Session: 600,
  },
  pkce: { required: () => true },
  features: {
    devInteractions: { enabled: false }, // the built-in login page; replaced below
    claimsParameter: { enabled: true }, // relying parties ask for acr/amr this way
    jwtUserinfo: { enabled: true },
    registration: { enabled: true }, // clients for servers on ports known late
  },
  findAccount: (ctx, sub) => {
    const person = bySub.get(sub);
    return person && { accountId: sub, claims: () => ({ ...person }) };
  },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
});

// Errors the provider hides from clients still belong in the test's output.
provider.on('server_error', (ctx, err) => console.error('provider.mjs server_error:', err));

provider.use(async (ctx, next) => {
  const login = ctx.path.match(/^\/interaction\/([^/]+)\/login$/);
  if (login && ctx.method === 'POST') {
    return finishLogin(ctx);
  }
  // The same provider, announcing another issuer in its metadata: a relying
  // party configured for `${issuer}/impostor` gets id_tokens whose iss is
  // `${issuer}`, which it must refuse. A real provider never lies like
  // this; a misconfigured proxy or an impostor copying a metadata document can.
  if (ctx.path === '/impostor/.well-known/openid-configuration' && ctx.method === 'GET') {
    const metadata = await (await fetch(`${issuer}/.well-known/openid-configuration`)).json();
    ctx.body = { ...metadata, issuer: `${issuer}/impostor` };
    return undefined;
  }
  return next();
});

// Log in the person named in the body with the acr/amr it gives, and grant
// the requested scopes and claims at once (a federation has no consent page).
async function finishLogin(ctx) {
  const { params, prompt } = await provider.interactionDetails(ctx.req, ctx.res);
  const body = JSON.parse(await readBody(ctx.req));
  const person = PEOPLE[body.login];
  if (!person || prompt.name !== 'login') {
    ctx.status = 400;
    ctx.body = { error: person ? `unexpected prompt ${prompt.name}` : 'unknown login' };
    return;
  }
  const grant = new provider.Grant({ accountId: person.sub, clientId: params.client_id });
  grant.addOIDCScope(params.scope);
  grant.addOIDCClaims(['acr', 'amr', 'auth_time']);
  const result = {
    login: { accountId: person.sub, acr: body.acr, amr: body.amr, remember: false },
    consent: { grantId: await grant.save() },
  };
  const returnTo = await provider.interactionResult(ctx.req, ctx.res, result, {
    mergeWithLastSubmission: false,
  });
  ctx.status = 303;
  ctx.redirect(returnTo);
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    let data = '';
    req.setEncoding('utf8');
    req.on('data', (chunk) => { data += chunk; });
    req.on('end', () => resolve(data));
    req.on('error', reject);
  });
}

// With --exit-with-stdin the process that started us holds our stdin: when
// it ends, however it ends (even killed before it could kill us), so do we.
if (args['exit-with-stdin']) {
  process.stdin.on('end', () => process.exit(0));
  process.stdin.resume();
}

server.on('request', provider.callback());
console.log(`listening ${issuer}`);
