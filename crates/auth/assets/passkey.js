// Rempart — browser half of the passkey (WebAuthn) ceremonies.
//
// The server sends the options as JSON, with binary values in unpadded
// base64url; the browser API wants ArrayBuffers. This script converts both
// ways, calls navigator.credentials.create/get, and posts the answer back as
// JSON. Plain ES2020, no dependency.
//
// Usage, once the page has fetched the server's options:
//   const response = await RempartPasskey.register(options, "/passkeys/finish");
//   const response = await RempartPasskey.authenticate(options, "/login/passkey/finish");
// Both resolve to the fetch Response of the POST; they reject with the
// browser's DOMException when the person cancels or no passkey matches
// (NotAllowedError), or with an Error named "PasskeyUnsupported".
// Extra request headers (a CSRF token, a device proof) go in `headers`, an
// object or a function returning one (or a promise of one).

"use strict";

const RempartPasskey = (() => {
  /** Unpadded (or padded) base64url text → ArrayBuffer. */
  function base64urlToBuffer(text) {
    const base64 = text.replace(/-/g, "+").replace(/_/g, "/");
    const padded = base64 + "=".repeat((4 - (base64.length % 4)) % 4);
    const binary = atob(padded);
    const bytes = new Uint8Array(binary.length);
    for (let i = 0; i < binary.length; i++) {
      bytes[i] = binary.charCodeAt(i);
    }
    return bytes.buffer;
  }

  /** ArrayBuffer (or a view on one) → unpadded base64url text. */
  function bufferToBase64url(buffer) {
    const bytes =
      buffer instanceof ArrayBuffer
        ? new Uint8Array(buffer)
        : new Uint8Array(buffer.buffer, buffer.byteOffset, buffer.byteLength);
    let binary = "";
    for (const byte of bytes) {
      binary += String.fromCharCode(byte);
    }
    return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  /** A deep copy without null members: the browser API refuses null where
   * it expects a list or a dictionary, while absent is fine. */
  function withoutNulls(value) {
    if (Array.isArray(value)) {
      return value.map(withoutNulls);
    }
    if (value !== null && typeof value === "object") {
      const copy = {};
      for (const [key, member] of Object.entries(value)) {
        if (member !== null) {
          copy[key] = withoutNulls(member);
        }
      }
      return copy;
    }
    return value;
  }

  function decodeCredentialList(list) {
    return (list || []).map((descriptor) => ({
      ...descriptor,
      id: base64urlToBuffer(descriptor.id),
    }));
  }

  function ensureSupported() {
    if (!window.PublicKeyCredential || !navigator.credentials) {
      const error = new Error("Ce navigateur ne prend pas en charge les clés d'accès.");
      error.name = "PasskeyUnsupported";
      throw error;
    }
  }

  // `headers` may be a function returning (a promise of) the headers: it
  // is called after the person answered, so a time-limited header (a
  // device proof) is made fresh.
  async function postJSON(url, body, headers) {
    const extra = typeof headers === "function" ? await headers() : headers;
    return fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { ...extra, "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
  }

  /**
   * Registers a new passkey: `serverOptions` is the server's creation
   * options ({ publicKey: ... }), `finishUrl` receives the answer.
   */
  async function register(serverOptions, finishUrl, headers = {}) {
    ensureSupported();
    const options = withoutNulls(serverOptions.publicKey);
    options.challenge = base64urlToBuffer(options.challenge);
    options.user = { ...options.user, id: base64urlToBuffer(options.user.id) };
    options.excludeCredentials = decodeCredentialList(options.excludeCredentials);

    const credential = await navigator.credentials.create({ publicKey: options });
    const response = credential.response;
    const extensions = credential.getClientExtensionResults();
    const answer = {
      id: credential.id,
      rawId: bufferToBase64url(credential.rawId),
      type: credential.type,
      response: {
        clientDataJSON: bufferToBase64url(response.clientDataJSON),
        attestationObject: bufferToBase64url(response.attestationObject),
        transports: typeof response.getTransports === "function" ? response.getTransports() : [],
      },
      // Only plain-JSON results the server reads; others may hold buffers.
      extensions: extensions.credProps ? { credProps: extensions.credProps } : {},
    };
    return postJSON(finishUrl, answer, headers);
  }

  /**
   * Logs in (or steps up) with a passkey: `serverOptions` is the server's
   * request options ({ publicKey: ... }); an empty allow list lets the
   * person pick any passkey they hold for this site.
   */
  async function authenticate(serverOptions, finishUrl, headers = {}) {
    ensureSupported();
    const options = withoutNulls(serverOptions.publicKey);
    options.challenge = base64urlToBuffer(options.challenge);
    options.allowCredentials = decodeCredentialList(options.allowCredentials);

    const credential = await navigator.credentials.get({ publicKey: options });
    const response = credential.response;
    const answer = {
      id: credential.id,
      rawId: bufferToBase64url(credential.rawId),
      type: credential.type,
      response: {
        clientDataJSON: bufferToBase64url(response.clientDataJSON),
        authenticatorData: bufferToBase64url(response.authenticatorData),
        signature: bufferToBase64url(response.signature),
        userHandle: response.userHandle ? bufferToBase64url(response.userHandle) : null,
      },
      extensions: {},
    };
    return postJSON(finishUrl, answer, headers);
  }

  return Object.freeze({ register, authenticate, base64urlToBuffer, bufferToBase64url });
})();
