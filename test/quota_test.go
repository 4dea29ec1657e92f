package test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/postscale/caddy-postscale/internal/testenv"
)

// Quotas (SPEC §3): a plan's or an account's sending volume per day or
// month. Only admitted live requests that quota_counts matches count; the
// exhausted quota answers 429 quota_exceeded until the period ends; test
// keys are counted apart and never refused; counts survive a restart.

var quotaExceeded = rejection{429, "", "rate_limit_error", "quota_exceeded", true}

// quotaItem matches the quota's item of a RateLimit field.
var quotaItem = regexp.MustCompile(`"([a-z0-9_-]+-(?:day|month))";r=(\d+);t=(\d+)`)

// quotaLeft returns the quota's name, r and t from a RateLimit field, or
// fails the test.
func quotaLeft(t *testing.T, r response) (name string, left, reset int64) {
	t.Helper()
	m := quotaItem.FindStringSubmatch(r.header.Get("RateLimit"))
	if m == nil {
		t.Fatalf("RateLimit %q has no quota item", r.header.Get("RateLimit"))
	}
	left, _ = strconv.ParseInt(m[2], 10, 64)
	reset, _ = strconv.ParseInt(m[3], 10, 64)
	return m[1], left, reset
}

// quotaSite is a gateway with plan small: 1000/s, 5 requests a day.
func quotaSite(t *testing.T, extra string) (*recorder, string) {
	t.Helper()
	return startGateway(t, "plan small 1000 {\n\t\t\tquota 5 day\n\t\t}\n\t\t"+extra)
}

func TestQuotaHeadersAndExhaustion(t *testing.T) {
	backend, _ := quotaSite(t, "")
	createAccount(t, "acme", "small")
	live := createKey(t, "acme", "live", "live")
	test := createKey(t, "acme", "sandbox", "test")

	var firstReset int64
	for i := range 5 {
		before := backend.count()
		r := get(t, "/v1/emails", bearer(live.Key))
		if r.status != http.StatusOK || backend.count() != before+1 {
			t.Fatalf("live request %d of a quota of 5: status %d, body %s", i+1, r.status, r.body)
		}
		if got, want := r.header.Get("RateLimit-Policy"), `"small";q=1000;w=1, "small-day";q=5`; got != want {
			t.Errorf("RateLimit-Policy: got %q, want %q", got, want)
		}
		name, left, reset := quotaLeft(t, r)
		if name != "small-day" || left != int64(4-i) {
			t.Errorf("request %d: quota item %s r=%d, want small-day r=%d", i+1, name, left, 4-i)
		}
		if reset < 1 || reset > 86400 {
			t.Errorf("request %d: quota t=%d, want the seconds to the end of the day period", i+1, reset)
		}
		firstReset = reset
	}
	r := expectRejected(t, backend, quotaExceeded, "/v1/emails", bearer(live.Key))
	if got, want := r.header.Get("RateLimit-Policy"), `"small";q=1000;w=1, "small-day";q=5`; got != want {
		t.Errorf("RateLimit-Policy when exhausted: got %q, want %q", got, want)
	}
	if name, left, reset := quotaLeft(t, r); name != "small-day" || left != 0 || reset > firstReset {
		t.Errorf("RateLimit when exhausted: %q; want small-day r=0 and t to the period's end", r.header.Get("RateLimit"))
	}
	if ra, _ := strconv.ParseInt(r.header.Get("Retry-After"), 10, 64); ra < firstReset-2 || ra > firstReset {
		t.Errorf("Retry-After when exhausted: %d, want the seconds to the period's end (about %d)", ra, firstReset)
	}
	// Refused again, still without reaching the backend.
	expectRejected(t, backend, quotaExceeded, "/v1/emails", bearer(live.Key))

	// Test traffic is never refused by the quota, and its fields name
	// the rate limit only.
	for range 3 {
		got := expectAdmitted(t, backend, test.Key, "/v1/emails")
		if got.Header.Get("Postscale-Mode") != "test" {
			t.Errorf("test request reached the backend as %q", got.Header.Get("Postscale-Mode"))
		}
	}
	tr := get(t, "/v1/emails", bearer(test.Key))
	if got := tr.header.Get("RateLimit-Policy"); got != `"small";q=1000;w=1` {
		t.Errorf("RateLimit-Policy of a test request: %q, want the rate limit only", got)
	}

	// The usage API: 5 live, 4 test, nothing left.
	var u usageDoc
	adminCall(t, http.MethodGet, "/postscale/accounts/acme/usage", nil, http.StatusOK, &u)
	if u.Live != 5 || u.Test != 4 || u.Remaining == nil || *u.Remaining != 0 || u.Quota == nil || u.Quota.Count != 5 || u.Quota.Period != "day" {
		t.Errorf("usage: %+v; want 5 live, 4 test, 0 left of 5/day", u)
	}
	if !u.PeriodEnd.After(time.Now()) || u.PeriodEnd.Sub(u.PeriodStart) != 24*time.Hour {
		t.Errorf("usage period [%s, %s): want the current day from the account's creation", u.PeriodStart, u.PeriodEnd)
	}
	var admitted, refused int64
	for _, h := range u.Hours {
		admitted += h.Admitted
		refused += h.Refused
	}
	if admitted != 5+4 || refused != 2 {
		t.Errorf("usage per hour: %d admitted, %d refused (%+v); want 9 and 2", admitted, refused, u.Hours)
	}
}

// usageDoc is the answer of GET /postscale/accounts/{id}/usage.
type usageDoc struct {
	Account     string    `json:"account"`
	Plan        string    `json:"plan"`
	PeriodStart time.Time `json:"period_start"`
	PeriodEnd   time.Time `json:"period_end"`
	Quota       *struct {
		Count  int64  `json:"count"`
		Period string `json:"period"`
	} `json:"quota"`
	Live      int64  `json:"live"`
	Test      int64  `json:"test"`
	Remaining *int64 `json:"remaining"`
	Hours     []struct {
		Hour     time.Time `json:"hour"`
		Admitted int64     `json:"admitted"`
		Refused  int64     `json:"refused"`
	} `json:"hours"`
}

// TestQuotaRefusedRequestsCountNothing: requests the rate limit refuses do
// not count towards the quota.
func TestQuotaRefusedRequestsCountNothing(t *testing.T) {
	backend, _ := startGateway(t, "plan tight 2 2 {\n\t\t\tquota 3 day\n\t\t}")
	createAccount(t, "acme", "tight")
	live := createKey(t, "acme", "live", "live")
	statuses := map[int]int{}
	for range 6 {
		statuses[get(t, "/v1/emails", bearer(live.Key)).status]++
	}
	if statuses[200] != 2 || statuses[429] != 4 {
		t.Fatalf("6 requests at once on a 2/s plan: %v, want 2 admitted", statuses)
	}
	time.Sleep(600 * time.Millisecond) // one token back
	expectAdmitted(t, backend, live.Key, "/v1/emails")
	expectRejected(t, backend, quotaExceeded, "/v1/emails", bearer(live.Key))
	if backend.count() != 3 {
		t.Errorf("the backend received %d requests; want the quota's 3", backend.count())
	}
}

// TestQuotaCounts: with quota_counts, only matching requests count, and
// the others pass although the quota is used up.
func TestQuotaCounts(t *testing.T) {
	backend, _ := quotaSite(t, "quota_counts {\n\t\t\tmethod POST\n\t\t\tpath /v1/emails*\n\t\t}")
	createAccount(t, "acme", "small")
	live := createKey(t, "acme", "live", "live")
	for range 4 {
		expectAdmitted(t, backend, live.Key, "/v1/emails") // GET: does not count
	}
	for i := range 5 {
		r := request(t, http.MethodPost, "/v1/emails/send", "{}", bearer(live.Key))
		if r.status != http.StatusOK {
			t.Fatalf("POST %d of 5: %d %s", i+1, r.status, r.body)
		}
	}
	assertRejected(t, request(t, http.MethodPost, "/v1/emails/send", "{}", bearer(live.Key)), quotaExceeded)
	// Requests that do not count still pass.
	expectAdmitted(t, backend, live.Key, "/v1/emails")
	r := request(t, http.MethodPost, "/v1/templates", "{}", bearer(live.Key))
	if r.status != http.StatusOK {
		t.Errorf("a POST that quota_counts does not match, after the quota is used up: %d", r.status)
	}
	if _, left, _ := quotaLeft(t, r); left != 0 {
		t.Errorf("RateLimit of a request that does not count: quota r=%d, want 0", left)
	}
}

// TestAccountQuota: an account's own quota, over its plan's, through the
// admin API, applied on the account's next request. A new count keeps
// what the period used; a quota of another period length counts that
// period apart.
func TestAccountQuota(t *testing.T) {
	backend, _ := quotaSite(t, "")
	createAccount(t, "acme", "small")
	live := createKey(t, "acme", "live", "live")
	expectAdmitted(t, backend, live.Key, "/v1/emails")
	type accountQuota struct {
		Quota *struct {
			Count  int64  `json:"count"`
			Period string `json:"period"`
		} `json:"quota"`
	}
	patch := func(quota any) accountQuota {
		t.Helper()
		var a accountQuota
		adminCall(t, http.MethodPatch, "/postscale/accounts/acme", map[string]any{"quota": quota}, http.StatusOK, &a)
		return a
	}
	// 3 a day instead of the plan's 5: one used, two left.
	if a := patch(map[string]any{"count": 3, "period": "day"}); a.Quota == nil || a.Quota.Count != 3 || a.Quota.Period != "day" {
		t.Fatalf("PATCH quota: account quota %+v", a.Quota)
	}
	for range 2 {
		expectAdmitted(t, backend, live.Key, "/v1/emails")
	}
	r := expectRejected(t, backend, quotaExceeded, "/v1/emails", bearer(live.Key))
	if got, want := r.header.Get("RateLimit-Policy"), `"small";q=1000;w=1, "small-day";q=3`; got != want {
		t.Errorf("RateLimit-Policy with the account's own quota: got %q, want %q", got, want)
	}
	// 2 a month: a period of its own.
	patch(map[string]any{"count": 2, "period": "month"})
	for range 2 {
		expectAdmitted(t, backend, live.Key, "/v1/emails")
	}
	expectRejected(t, backend, quotaExceeded, "/v1/emails", bearer(live.Key))
	// Back to the plan's 5 a day: the day's 3 go on.
	if a := patch(nil); a.Quota != nil {
		t.Fatalf("PATCH quota null: account quota %+v, want none", a.Quota)
	}
	for range 2 {
		expectAdmitted(t, backend, live.Key, "/v1/emails")
	}
	expectRejected(t, backend, quotaExceeded, "/v1/emails", bearer(live.Key))
	// Refused: a quota of another period.
	if msg := adminError(t, http.MethodPatch, "/postscale/accounts/acme", map[string]any{"quota": map[string]any{"count": 2, "period": "week"}}, http.StatusBadRequest); !strings.Contains(msg, "period") {
		t.Errorf("PATCH a weekly quota: %q, want an error naming the period", msg)
	}
}

// restartSurvives uses up a quota of 5 on one gateway, stops it (a
// graceful stop flushes the counts), starts another on the same store,
// and expects the quota still used up.
func restartSurvives(t *testing.T, storeLine string) {
	site := func(backend *recorder) string {
		return fmt.Sprintf(`:{$POSTSCALE_TEST_HTTP_PORT} {
	postscale {
		%s
		plan small 1000 {
			quota 5 day
		}
	}
	reverse_proxy %s
}
`, storeLine, backend.addr())
	}
	backend := newRecorder(t, "mail")
	loadCaddyfile(t, site(backend))
	createAccount(t, "acme", "small")
	live := createKey(t, "acme", "live", "live")
	for range 3 {
		expectAdmitted(t, backend, live.Key, "/v1/emails")
	}
	unloadConfig(t)
	loadCaddyfile(t, site(backend))
	for range 2 {
		expectAdmitted(t, backend, live.Key, "/v1/emails")
	}
	expectRejected(t, backend, quotaExceeded, "/v1/emails", bearer(live.Key))
	unloadConfig(t)
	loadCaddyfile(t, site(backend))
	expectRejected(t, backend, quotaExceeded, "/v1/emails", bearer(live.Key))
	if backend.count() != 5 {
		t.Errorf("the backend received %d live requests across restarts; want the quota's 5", backend.count())
	}
}

func TestQuotaSurvivesRestartSQLite(t *testing.T) {
	restartSurvives(t, "store sqlite "+storePath(t))
}

func TestQuotaSurvivesRestartPostgres(t *testing.T) {
	restartSurvives(t, fmt.Sprintf("store postgres %q", testenv.Postgres(t)))
}

// TestQuotaCLI: an account's quota and anchor set and cleared from the
// command line, through a running gateway and straight on its store, and
// its usage shown.
func TestQuotaCLI(t *testing.T) {
	backend, store := quotaSite(t, "")
	cli(t, "--address", adminAddr, "account", "create", "acme", "--plan", "small", "--quota", "3/month", "--quota-anchor", "2026-01-31T00:00:00Z")
	live := createKey(t, "acme", "live", "live")
	for range 3 {
		expectAdmitted(t, backend, live.Key, "/v1/emails")
	}
	expectRejected(t, backend, quotaExceeded, "/v1/emails", bearer(live.Key))

	var u usageDoc
	if err := json.Unmarshal([]byte(cli(t, "--address", adminAddr, "account", "usage", "acme")), &u); err != nil {
		t.Fatal(err)
	}
	if u.Quota == nil || u.Quota.Count != 3 || u.Quota.Period != "month" || u.Live != 3 || u.Remaining == nil || *u.Remaining != 0 {
		t.Errorf("account usage: %+v; want 3 of 3/month used", u)
	}
	if d := u.PeriodStart.Day(); d != min(31, time.Date(u.PeriodStart.Year(), u.PeriodStart.Month()+1, 0, 0, 0, 0, 0, time.UTC).Day()) {
		t.Errorf("account usage: the period starts %s; want the billing day (the 31st, or the month's last day)", u.PeriodStart)
	}
	if len(u.Hours) != 48 || u.Hours[47].Admitted != 3 || u.Hours[47].Refused != 1 {
		t.Errorf("account usage hours: %d hours, the last %+v; want 48, the last with 3 admitted and 1 refused", len(u.Hours), u.Hours[len(u.Hours)-1])
	}

	// Back to the plan's 5 a day: the day period is counted apart.
	out := cli(t, "--address", adminAddr, "account", "update", "acme", "--quota", "none", "--quota-anchor", "none")
	if strings.Contains(out, `"quota"`) || strings.Contains(out, "quota_anchor") {
		t.Errorf("account update --quota none --quota-anchor none: %s; want neither left", out)
	}
	expectAdmitted(t, backend, live.Key, "/v1/emails")

	// Straight on the store, no server: the account's own quota.
	unloadConfig(t)
	out = cli(t, "--store", store, "account", "update", "acme", "--quota", "10/day")
	if !strings.Contains(out, `"count": 10`) && !strings.Contains(out, `"count":10`) {
		t.Errorf("account update on the store: %s; want the quota 10/day", out)
	}
	if _, stderr, err := runCLI("--store", store, "account", "update", "acme", "--quota", "10/week"); err == nil || !strings.Contains(stderr+err.Error(), `"day" or "month"`) {
		t.Errorf("account update --quota 10/week: err %v, stderr %q; want a refusal naming day and month", err, stderr)
	}
}

// TestQuotaOfCustomRateAccount: an account with its own rate (enterprise)
// keeps its plan's quota, as the usage report says.
func TestQuotaOfCustomRateAccount(t *testing.T) {
	backend, _ := startGateway(t, "plan enterprise 100 {\n\t\t\tquota 2 day\n\t\t}")
	adminCall(t, http.MethodPost, "/postscale/accounts", map[string]any{"id": "bigco", "plan": "enterprise", "rate": 500}, http.StatusCreated, nil)
	live := createKey(t, "bigco", "live", "live")
	for range 2 {
		expectAdmitted(t, backend, live.Key, "/v1/emails")
	}
	r := expectRejected(t, backend, quotaExceeded, "/v1/emails", bearer(live.Key))
	if got, want := r.header.Get("RateLimit-Policy"), `"enterprise";q=500;w=1, "enterprise-day";q=2`; got != want {
		t.Errorf("RateLimit-Policy: got %q, want %q", got, want)
	}
	var u usageDoc
	adminCall(t, http.MethodGet, "/postscale/accounts/bigco/usage", nil, http.StatusOK, &u)
	if u.Quota == nil || u.Quota.Count != 2 || u.Remaining == nil || *u.Remaining != 0 {
		t.Errorf("usage of the custom-rate account: %+v; want its plan's quota of 2, none left", u)
	}
}
