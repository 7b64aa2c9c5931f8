// The device key: what makes a copied session cookie useless.
//
// At login the page creates an ECDSA P-256 key pair whose private half is
// non-extractable (WebCrypto keeps it; no script, not even this one, can
// read it out) and keeps it in IndexedDB for the session's life. The login
// request carries a proof signed with it, and the server binds the session
// to the key's thumbprint. Every later request carries a fresh proof
// (RFC 9449 DPoP format: method, URL, time, unique id, and `ath`, the hash
// of the session's public handle), so a cookie stolen from this browser is
// refused anywhere else.
"use strict";

const Device = (() => {
  const DB = "rempart";
  const STORE = "keys";
  const NAME = "device";

  const b64url = (bytes) =>
    btoa(String.fromCharCode(...new Uint8Array(bytes)))
      .replace(/\+/g, "-")
      .replace(/\//g, "_")
      .replace(/=+$/, "");
  const utf8 = (text) => new TextEncoder().encode(text);

  function db() {
    return new Promise((resolve, reject) => {
      const open = indexedDB.open(DB, 1);
      open.onupgradeneeded = () => open.result.createObjectStore(STORE);
      open.onsuccess = () => resolve(open.result);
      open.onerror = () => reject(open.error);
    });
  }

  async function stored(mode, action) {
    const handle = await db();
    return new Promise((resolve, reject) => {
      const tx = handle.transaction(STORE, mode);
      const request = action(tx.objectStore(STORE));
      tx.oncomplete = () => resolve(request.result);
      tx.onerror = () => reject(tx.error);
    });
  }

  /** A new non-extractable key pair, replacing any previous one. */
  async function create() {
    const pair = await crypto.subtle.generateKey(
      { name: "ECDSA", namedCurve: "P-256" },
      false,
      ["sign", "verify"],
    );
    await stored("readwrite", (s) => s.put(pair, NAME));
    return pair;
  }

  /** The current key pair, or null when this browser has none. */
  async function current() {
    return (await stored("readonly", (s) => s.get(NAME))) || null;
  }

  /** Forgets the key (at logout). */
  async function forget() {
    await stored("readwrite", (s) => s.delete(NAME));
  }

  async function publicJwk(pair) {
    const { kty, crv, x, y } = await crypto.subtle.exportKey("jwk", pair.publicKey);
    return { kty, crv, x, y };
  }

  /**
   * A proof for one request: a compact JWS (ES256) over htm, htu, iat, jti
   * and, once logged in, ath = SHA-256 of the session handle.
   */
  async function proof(pair, method, url, handle) {
    const htu = new URL(url, location.href);
    htu.search = "";
    htu.hash = "";
    const header = { typ: "dpop+jwt", alg: "ES256", jwk: await publicJwk(pair) };
    const claims = {
      htm: method.toUpperCase(),
      htu: htu.href,
      iat: Math.floor(Date.now() / 1000),
      jti: b64url(crypto.getRandomValues(new Uint8Array(16))),
    };
    if (handle) {
      claims.ath = b64url(await crypto.subtle.digest("SHA-256", utf8(handle)));
    }
    const input =
      b64url(utf8(JSON.stringify(header))) + "." + b64url(utf8(JSON.stringify(claims)));
    // WebCrypto's ECDSA signature is r || s, 64 bytes: exactly JWS's form.
    const signature = await crypto.subtle.sign(
      { name: "ECDSA", hash: "SHA-256" },
      pair.privateKey,
      utf8(input),
    );
    return input + "." + b64url(signature);
  }

  /**
   * fetch() with the device proof. `handle` is the session's public handle
   * (in the page's <meta name="rempart-session">), absent before login.
   */
  async function call(method, url, body, pair) {
    const key = pair || (await current());
    if (!key) throw new Error("no device key: log in again");
    const meta = document.querySelector('meta[name="rempart-session"]');
    const handle = meta ? meta.content : null;
    const headers = { DPoP: await proof(key, method, url, handle) };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    return fetch(url, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "same-origin",
      redirect: "error",
    });
  }

  return { create, current, forget, publicJwk, proof, call };
})();
