"""The `enphase` collector: Enlighten cloud API v4 (system summary), within the plan's monthly quota.

Two things make this source hard, and both are handled on the root side, because the sandboxed child cannot
write files:
- OAuth2 refresh tokens work once. Each refresh returns a new one, which is stored (atomically, 0600) before
  anything else happens; losing it means re-authorising by hand.
- The free plan allows about 1,000 calls a month. Calls are spaced by `min_interval` (derived from the quota),
  the last reading is reused in between while it is fresh, and after a 429 no call is made before the
  `period_end` the API gave. The call is recorded before it is made, so a crash can never become a burst.
"""

from __future__ import annotations

import math
import time

from dreadpi.collectors import Context, Invocation, api
from dreadpi.errors import CollectorError
from dreadpi.reading import Reading
from dreadpi.schema import Field, integer, number, text

AUTHORIZE_URL = "https://api.enphaseenergy.com/oauth/authorize"
REDIRECT_URI = "https://api.enphaseenergy.com/oauth/redirect_uri"  # Enphase's default: shows the code to copy
MONTH = 31 * 86400.0  # the longest month: a budget that fits it fits every month
REAUTHORISE = "re-authorise with: dreadpi enphase-auth"
REFRESH_IDLE = 30 * 86400.0  # a refresh token expires after about a month without use


def _optional_seconds(raw: str) -> float | None:
    return None if not raw.strip() else number(minimum=60, maximum=86400)(raw)


def interval(settings: dict) -> float:
    """Seconds between API calls: min_interval, or the longest month spread evenly over the monthly quota."""
    given = settings.get("min_interval")
    return float(given) if given is not None else math.ceil(MONTH / settings["monthly_quota"])


def _seed(settings: dict) -> str:
    """Which configured refresh_token the stored tokens descend from (a hash: the store must not repeat it)."""
    token = settings.get("refresh_token") or ""
    if not token:
        return ""
    import hashlib  # here, not at the top: config validation imports every collector on every cycle

    return hashlib.sha256(token.encode()).hexdigest()[:16]


def _hhmm(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(epoch))


class EnphaseCollector:
    name = "enphase"
    secret_keys = ("api_key", "client_secret", "refresh_token")
    schema = {
        "api_key": Field(text(r"[A-Za-z0-9]{16,64}", "an Enlighten API key (32 hex digits)", secret=True),
                         doc="the application's API key (developer-v4.enphaseenergy.com); secret"),
        "client_id": Field(text(r"[A-Za-z0-9]{16,64}", "an OAuth client id (32 hex digits)"),
                           doc="the application's OAuth client id"),
        "client_secret": Field(text(r"[A-Za-z0-9]{16,128}", "an OAuth client secret", secret=True),
                               doc="the application's OAuth client secret; secret"),
        "system_id": Field(text(r"[1-9][0-9]{0,11}", "a numeric Enlighten system id"),
                           doc="the system to read (in the Enlighten URL of the system)"),
        "refresh_token": Field(text(r"[A-Za-z0-9._~+/=-]{8,4096}|", "an OAuth refresh token, or empty",
                                    secret=True), "",
                               "initial refresh token; rotated ones are kept in the state dir. Empty: run "
                               "dreadpi enphase-auth once instead; secret"),
        "monthly_quota": Field(integer(minimum=10, maximum=10_000_000), 1000,
                               "API calls the plan allows a month (free plan: 1000)"),
        "min_interval": Field(_optional_seconds, None, "seconds between API calls; empty = the longest month / "
                                                       "monthly_quota (2679 s for 1000)"),
    }

    def credential_expiry(self, settings: dict, state_dir: str) -> tuple:
        """An Enlighten refresh token stops working after a month unused (each refresh issues a new one), so the
        stored one expires a month after it was stored; unknown before the first refresh."""
        try:
            stored = api.Store(state_dir, self.name).read("tokens")
        except CollectorError:  # a broken store is the cycle's error to report, not this estimate's
            stored = None
        at = _float((stored or {}).get("stored_at"))
        return (at + REFRESH_IDLE if at else None), "the Enlighten refresh token", REAUTHORISE

    def check(self, settings: dict, policy: dict) -> list:
        max_age = policy.get("max_age")
        spacing = interval(settings)
        if max_age is not None and max_age < spacing:
            return [f"policy.max_age: {max_age:g} s is shorter than the {spacing:g} s between Enphase API calls "
                    f"(enphase.min_interval / monthly_quota), so every reading would go stale before the next; set "
                    f"policy.max_age to at least {spacing + 900:g} (Enlighten data also lags about 15 minutes)"]
        return []

    # -- the cycle ----------------------------------------------------------------------------------------------

    def plan(self, ctx: Context) -> Invocation | Reading:
        store = api.Store(ctx.state_dir, self.name)
        budget = store.read("budget") or {}
        cached = _cached(budget)
        fresh = cached if cached is not None and ctx.now - cached.at <= ctx.max_age else None
        blocked = _float(budget.get("blocked_until"))
        if blocked and ctx.now < blocked:
            if fresh is not None:
                ctx.notes.append(f"quota exhausted until {_hhmm(blocked)}; reusing the reading from "
                                 f"{_hhmm(fresh.at)}")
                return fresh
            raise CollectorError(f"quota exhausted until {_hhmm(blocked)}; no API call before then", "quota")
        spacing = interval(ctx.settings)
        last_call = _float(budget.get("last_call"))
        if last_call and 0 <= ctx.now - last_call < spacing:
            if fresh is not None:
                return fresh
            raise CollectorError(f"no API call before {_hhmm(last_call + spacing)} (one every {spacing / 60:.0f} "
                                 f"min keeps within {ctx.settings['monthly_quota']} a month) and the last reading "
                                 f"is {_age(cached, ctx.now)}", "quota")
        tokens = self._tokens(ctx, store)
        budget["last_call"] = ctx.now
        store.write("budget", budget)
        wanted = {key: ctx.settings[key] for key in ("api_key", "client_id", "client_secret", "system_id")}
        wanted.update(tokens)
        return api.invocation(self.name, wanted, ctx.timeout)

    def parse(self, stdout: bytes, ctx: Context) -> Reading:
        result = api.decode(stdout)
        store = api.Store(ctx.state_dir, self.name)
        self._keep_tokens(result, ctx, store)  # first: the old refresh token is already dead
        budget = store.read("budget") or {}
        until = _float(result.get("quota_until"))
        if until:
            budget["blocked_until"] = until
            store.write("budget", budget)
        ctx.notes.extend(api.warnings(result))
        failure = api.error(result)
        if failure:
            raise CollectorError(failure, api.problem(result))
        found = api.reading(result, self.name)
        budget["last"] = {"watts": found.watts, "at": found.at}
        budget.pop("blocked_until", None)
        store.write("budget", budget)
        return found

    # -- tokens -------------------------------------------------------------------------------------------------

    def _tokens(self, ctx: Context, store: api.Store) -> dict:
        """The tokens to use: the stored ones, unless the config now holds a different initial token."""
        stored = store.read("tokens")
        seed = _seed(ctx.settings)
        if stored and (stored.get("seed") == seed or not seed):
            tokens = {key: stored.get(key) for key in ("access_token", "refresh_token", "access_expires_at")}
        else:
            tokens = {"access_token": "", "refresh_token": ctx.settings["refresh_token"], "access_expires_at": 0}
        if not tokens["refresh_token"]:
            where = f"{store.path('tokens')} is missing" if not stored else f"{store.path('tokens')} has no token"
            raise CollectorError(f"not authorised: {where} and enphase.refresh_token is empty; {REAUTHORISE}",
                                 "auth")
        ctx.secrets.extend(str(tokens[key] or "") for key in ("access_token", "refresh_token"))
        return tokens

    def _keep_tokens(self, result: dict, ctx: Context, store: api.Store) -> None:
        tokens = result.get("tokens")
        if tokens is None:
            return
        if not isinstance(tokens, dict) or not all(isinstance(tokens.get(k), str) and tokens.get(k)
                                                    for k in ("access_token", "refresh_token")):
            raise CollectorError("the collector returned malformed tokens")
        ctx.secrets.extend([tokens["access_token"], tokens["refresh_token"]])
        record = {"access_token": tokens["access_token"], "refresh_token": tokens["refresh_token"],
                  "access_expires_at": _float(tokens.get("access_expires_at")), "seed": _seed(ctx.settings),
                  "stored_at": time.time()}
        try:
            store.write("tokens", record)
        except CollectorError as err:
            raise CollectorError(f"the refreshed tokens could not be stored ({err}); the previous refresh token no "
                                 f"longer works, so {REAUTHORISE}") from None

    # -- first authorisation (dreadpi enphase-auth) ---------------------------------------------------------------

    def authorize_url(self, settings: dict) -> str:
        import urllib.parse

        query = urllib.parse.urlencode({"response_type": "code", "client_id": settings["client_id"],
                                        "redirect_uri": REDIRECT_URI})
        return f"{AUTHORIZE_URL}?{query}"

    def exchange(self, ctx: Context, code: str) -> Invocation:
        wanted = {key: ctx.settings[key] for key in ("client_id", "client_secret")}
        wanted.update(mode="authorize", code=code, redirect_uri=REDIRECT_URI)
        ctx.secrets.append(code)
        return api.invocation(self.name, wanted, ctx.timeout)

    def keep_authorisation(self, stdout: bytes, ctx: Context) -> None:
        result = api.decode(stdout)
        failure = api.error(result)
        if failure:
            raise CollectorError(failure, api.problem(result))
        if result.get("tokens") is None:
            raise CollectorError("the token endpoint returned no tokens")
        self._keep_tokens(result, ctx, api.Store(ctx.state_dir, self.name))


def _float(value: object) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else 0.0  # type: ignore[arg-type]


def _cached(budget: dict) -> Reading | None:
    last = budget.get("last")
    if not isinstance(last, dict):
        return None
    watts, at = _float(last.get("watts")), _float(last.get("at"))
    return Reading(watts=watts, at=at, source="enphase") if at else None


def _age(cached: Reading | None, now: float) -> str:
    return f"{(now - cached.at) / 60:.0f} min old" if cached is not None else "missing"


COLLECTOR = EnphaseCollector()
