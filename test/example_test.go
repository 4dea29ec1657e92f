package test

import (
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
)

// TestExampleCaddyfile runs the example Caddyfile as the repository ships
// it (exampleGolden; its ports replaced by free ones) and does what the
// README's quick start, scoped keys and legacy import do with it: the
// health check is open, the stand-in mail service answers with what the
// gateway handed it (no Authorization), test keys go to the sandbox, a
// revoked key stops, a send-only key cannot read, and an imported legacy
// key works once legacy_keys is added and the config reloaded.
func TestExampleCaddyfile(t *testing.T) {
	example, _ := readGolden(t, exampleGolden)
	for _, r := range []struct{ old, new string }{
		{"admin 127.0.0.1:2019", "admin {$POSTSCALE_ADMIN}"},
		{"\n:8080 {", "\n:{$POSTSCALE_LISTEN_PORT} {"},
		{"8091", strconv.Itoa(freePort(t))},
		{"8092", strconv.Itoa(freePort(t))},
	} {
		if !strings.Contains(example, r.old) {
			t.Fatalf("%s no longer has %q; change this test to match", exampleGolden, r.old)
		}
		example = strings.ReplaceAll(example, r.old, r.new)
	}
	p := startProc(t, "example", example)

	if r := p.send(t, http.MethodGet, "/healthz", ""); r.status != http.StatusOK || string(r.body) != "ok" {
		t.Errorf("GET /healthz without a key: got %d %q, want 200 ok", r.status, r.body)
	}
	assertRejected(t, p.send(t, http.MethodPost, "/v1/emails", ""), missingKey)

	p.createAccount(t, "acme", "growth")
	live := p.createKey(t, "acme", "live")
	test := p.createKey(t, "acme", "test")
	p.expectEmail(t, live.Key, "mail", exampleAnswer{Service: "mail", Delivered: true, Path: "/v1/emails",
		Mode: "live", Account: "acme", KeyID: live.ID, Plan: "growth"})
	p.expectEmail(t, test.Key, "sandbox", exampleAnswer{Service: "sandbox", Delivered: false, Path: "/v1/emails",
		Mode: "test", Account: "acme", KeyID: test.ID, Plan: "growth"})

	p.admin(t, http.MethodDelete, "/postscale/keys/"+live.ID, nil, http.StatusOK, nil)
	assertRejected(t, p.send(t, http.MethodPost, "/v1/emails", live.Key), revokedKey)

	var sender createdKey
	p.admin(t, http.MethodPost, "/postscale/keys", map[string]any{
		"account": "acme", "name": "sender", "mode": "live", "scopes": []string{"emails:send"},
	}, http.StatusCreated, &sender)
	if r := p.send(t, http.MethodPost, "/v1/emails", sender.Key); r.status != http.StatusAccepted {
		t.Errorf("send-only key sending: got %d, want 202 from the mail service", r.status)
	}
	if r := p.send(t, http.MethodGet, "/v1/emails", sender.Key); r.status != http.StatusForbidden {
		t.Errorf("send-only key reading: got %d, want 403 insufficient_scope", r.status)
	}

	// Legacy keys: imported, refused while the example leaves legacy_keys
	// off, admitted once it is added and the config reloaded.
	const legacy = "ps_live_abc123xyz"
	p.createAccount(t, "globex", "starter")
	p.admin(t, http.MethodPost, "/postscale/keys/import", map[string]any{
		"keys": []map[string]any{{"account": "globex", "name": "old production", "key": legacy}},
	}, http.StatusCreated, nil)
	assertRejected(t, p.send(t, http.MethodPost, "/v1/emails", legacy), invalidKey)

	const block = "postscale @needs_key {\n"
	if !strings.Contains(example, block) {
		t.Fatalf("%s no longer has %q; change this test to match", exampleGolden, block)
	}
	withLegacy := strings.Replace(example, block, block+"\t\tlegacy_keys\n", 1)
	if err := os.WriteFile(p.config, []byte(withLegacy), 0o600); err != nil {
		t.Fatal(err)
	}
	reload := exec.Command(gatewayBinary(t), "reload", "--config", p.config, "--adapter", "caddyfile")
	reload.Env = append(os.Environ(), p.env...)
	if out, err := reload.CombinedOutput(); err != nil {
		t.Fatalf("caddy reload with legacy_keys added: %v\n%s", err, out)
	}
	p.expectEmail(t, legacy, "mail", exampleAnswer{Service: "mail", Delivered: true, Path: "/v1/emails",
		Mode: "live", Account: "globex", Plan: "starter"})
}

// exampleAnswer is what the example's stand-in backends answer: the
// request as the gateway handed it on.
type exampleAnswer struct {
	Service       string `json:"service"`
	Delivered     bool   `json:"delivered"`
	Path          string `json:"path"`
	Mode          string `json:"mode"`
	Account       string `json:"account"`
	KeyID         string `json:"key_id"`
	Plan          string `json:"plan"`
	Authorization string `json:"authorization"`
}

// expectEmail sends POST /v1/emails with key, as the README's curl does,
// and checks the backend's answer: 202 and want (a KeyID left empty is not
// checked), with no Authorization header handed on.
func (p *proc) expectEmail(t *testing.T, key, backend string, want exampleAnswer) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, p.url("/v1/emails"), strings.NewReader(`{"to":"ada@example.com"}`))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+key)
	resp, body := send(t, req)
	var got exampleAnswer
	if resp.StatusCode != http.StatusAccepted || json.Unmarshal(body, &got) != nil {
		t.Fatalf("POST /v1/emails: got %d %s, want 202 from the %s backend", resp.StatusCode, orRedacted(body, key), backend)
	}
	if got.Authorization != "" {
		t.Errorf("the %s backend got an Authorization header; want none", backend)
		got.Authorization = ""
	}
	if want.KeyID == "" {
		got.KeyID = ""
	}
	if got != want {
		t.Errorf("the %s backend answered %+v, want %+v", backend, got, want)
	}
}

// orRedacted is body, or a note if it holds key's secret part.
func orRedacted(body []byte, key string) string {
	if showsKey(string(body), key) != "" {
		return "(a body that shows the key)"
	}
	return string(body)
}
