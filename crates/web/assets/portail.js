// Rempart — the pages' script: login (passkey, password + code, ProConnect),
// the portal's fragments, passkey registration, step-up, break-glass and logout. Every request after login goes through
// Device.call, which signs a device proof; the session cookie alone is
// refused. The page says which part runs: <body data-page="…">.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const say = (text) => {
    const m = $("message");
    if (m) m.textContent = text;
  };
  const handle = () => {
    const meta = document.querySelector('meta[name="rempart-session"]');
    return meta ? meta.content : null;
  };
  async function body(response) {
    try {
      return await response.json();
    } catch (_) {
      return {};
    }
  }
  const failed = (error) =>
    error && error.name === "NotAllowedError"
      ? "Opération annulée ou aucune clé d'accès ne correspond."
      : (error && error.message) || "L'opération a échoué.";

  // ------------------------------------------------------------------ login

  /** A fresh device key, then a ceremony started with a proof it signed. */
  async function begin(kind) {
    const pair = await Device.create();
    const response = await Device.call("POST", "/connexion/defi", { kind }, pair);
    const answer = await body(response);
    if (!response.ok) throw new Error(answer.message || "La connexion a échoué.");
    return { pair, ceremony: answer.ceremony, options: answer.options };
  }

  async function finished(response) {
    const answer = await body(response);
    if (response.ok) {
      // Failed logins from other browsers: the owner is told on arrival.
      const elsewhere = Number(answer.failed_attempts_elsewhere) || 0;
      if (elsewhere > 0) sessionStorage.setItem("rempart-tentatives", String(elsewhere));
      location.assign(answer.next || "/portail");
    } else {
      say(answer.message || "La connexion a échoué.");
    }
  }

  async function passwordLogin(event) {
    event.preventDefault();
    say("");
    const form = event.target;
    try {
      const { pair, ceremony } = await begin("password");
      const response = await Device.call(
        "POST",
        "/connexion/mot-de-passe",
        {
          ceremony,
          login: form.login.value,
          password: form.password.value,
          code: form.code.value,
        },
        pair,
      );
      form.password.value = "";
      form.code.value = "";
      await finished(response);
    } catch (error) {
      say(failed(error));
    }
  }

  async function passkeyLogin() {
    say("");
    try {
      const { pair, ceremony, options } = await begin("passkey");
      const url = "/connexion/cle?ceremonie=" + encodeURIComponent(ceremony);
      const response = await RempartPasskey.authenticate(options, url, async () => ({
        DPoP: await Device.proof(pair, "POST", url, null),
      }));
      await finished(response);
    } catch (error) {
      say(failed(error));
    }
  }

  // ------------------------------------------------------------ ProConnect

  const FEDERATION_REFUSED =
    "La connexion par ProConnect n'a pas abouti. Recommencez depuis la page de connexion.";

  /**
   * A fresh device key, a federated login begun with a proof it signed,
   * then off to the provider. The key stays in IndexedDB for the return.
   */
  async function federationLogin() {
    say("");
    try {
      const pair = await Device.create();
      const response = await Device.call("POST", "/connexion/federation/debut", undefined, pair);
      const answer = await body(response);
      if (!response.ok || !answer.redirect) {
        throw new Error(answer.message || "La connexion a échoué.");
      }
      location.assign(answer.redirect);
    } catch (error) {
      say(failed(error));
    }
  }

  /**
   * Back from the provider: the code and the state leave the address bar
   * and the history at once, then go to the server with a proof by the key
   * made before leaving; the session is bound to that key.
   */
  async function federationReturn() {
    const params = new URLSearchParams(location.search);
    const code = params.get("code");
    const state = params.get("state");
    history.replaceState(null, "", location.pathname);
    if (!code || !state) {
      say(FEDERATION_REFUSED);
      return;
    }
    try {
      const pair = await Device.current();
      if (!pair) throw new Error(FEDERATION_REFUSED);
      const response = await Device.call("POST", "/connexion/federation/fin", { code, state }, pair);
      await finished(response);
    } catch (error) {
      say(failed(error));
    }
  }

  // ------------------------------------------------------------------ portal

  async function load(url) {
    const response = await Device.call("GET", url);
    if (response.status === 401) {
      location.assign("/connexion");
      return;
    }
    // Server-rendered and escaped; the policy forbids inline scripts.
    $("contenu").innerHTML = await response.text();
  }

  /** A passkey ceremony inside the session: registration or step-up. */
  async function sessionCeremony(start, finish, register) {
    say("");
    try {
      const pair = await Device.current();
      const response = await Device.call("POST", start, undefined, pair);
      const answer = await body(response);
      if (!response.ok) throw new Error(answer.message || "L'opération a échoué.");
      const url = finish + "?ceremonie=" + encodeURIComponent(answer.ceremony);
      const headers = async () => ({ DPoP: await Device.proof(pair, "POST", url, handle()) });
      const done = register
        ? await RempartPasskey.register(answer.options, url, headers)
        : await RempartPasskey.authenticate(answer.options, url, headers);
      const result = await body(done);
      say(result.message || (done.ok ? "C'est fait." : "L'opération a échoué."));
      return done.ok;
    } catch (error) {
      say(failed(error));
      return false;
    }
  }

  /**
   * Break-glass from the person view: a fresh confirmation with the
   * passkey (step-up) first, then the request with its written reason; the
   * answer (the person, or why not) replaces the view.
   */
  async function breakGlass(form) {
    const stepped = await sessionCeremony(
      "/portail/verification/debut",
      "/portail/verification/fin",
      false,
    );
    if (!stepped) return;
    const url = "/portail/f/personne/" + encodeURIComponent(form.dataset.personne) + "/bris-de-glace";
    const response = await Device.call("POST", url, {
      finalite: form.dataset.finalite,
      motif: form.motif.value,
    });
    if (response.status === 401) {
      location.assign("/connexion");
      return;
    }
    $("contenu").innerHTML = await response.text();
  }

  async function logout() {
    try {
      if (await Device.current()) {
        await Device.call("POST", "/deconnexion");
      }
    } catch (_) {
      // The session ends anyway when it idles out; the key goes now.
    }
    await Device.forget();
  }

  // ------------------------------------------------------------------ wiring

  document.addEventListener("DOMContentLoaded", () => {
    const page = document.body.dataset.page;
    if (page === "connexion") {
      $("mot-de-passe").addEventListener("submit", passwordLogin);
      $("cle").addEventListener("click", passkeyLogin);
      const proconnect = $("proconnect");
      if (proconnect) proconnect.addEventListener("click", federationLogin);
    } else if (page === "federation") {
      federationReturn();
    } else if (page === "portail") {
      document.addEventListener("click", (event) => {
        const link = event.target.closest("a[data-fragment]");
        if (link) {
          event.preventDefault();
          load(link.getAttribute("href"));
        }
      });
      document.addEventListener("submit", (event) => {
        if (event.target.id === "bris-de-glace") {
          event.preventDefault();
          breakGlass(event.target);
        }
      });
      $("ajouter-cle").addEventListener("click", () =>
        sessionCeremony("/portail/cle/debut", "/portail/cle/fin", true),
      );
      $("verifier").addEventListener("click", () =>
        sessionCeremony("/portail/verification/debut", "/portail/verification/fin", false),
      );
      $("deconnexion").addEventListener("click", async () => {
        await logout();
        location.assign("/deconnexion");
      });
      load("/portail/f/dossiers");
      const elsewhere = sessionStorage.getItem("rempart-tentatives");
      if (elsewhere) {
        sessionStorage.removeItem("rempart-tentatives");
        say(
          `Attention : ${elsewhere} tentative(s) de connexion échouée(s) sur votre compte ` +
            "depuis d'autres navigateurs depuis votre dernière connexion. " +
            "Si ce n'était pas vous, prévenez votre responsable sécurité.",
        );
      }
    } else if (page === "deconnexion") {
      logout().then(() => say("Vous êtes déconnecté."));
    }
  });
})();
