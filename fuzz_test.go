package postscale

// Fuzz tests of everything a client or an operator can feed the gateway:
// the Authorization header, the key and its checksum, the query check, the
// Caddyfile, and the admin API's JSON bodies. Their seed corpora are in
// testdata/fuzz/<FuzzName>/ (beside the f.Add seeds); `go test` runs every
// seed, and test.sh fuzzes each one briefly. To fuzz one longer:
//
//	go test -run '^$' -fuzz '^FuzzAdminBody$' -fuzztime 10m .
//
// A failure writes its input to testdata/fuzz/<FuzzName>/; commit it, so
// it stays a regression test.

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// ---- the Authorization header ----

// FuzzAuthorization feeds bearerToken one or more Authorization values (the
// input split at newlines, as a client sending several headers) and checks
// it against the contract (README, Errors): several headers are a 400 whatever
// they hold; one header is parsed with a case-insensitive scheme; a token
// it returns is what follows the scheme, non-empty, without surrounding
// blanks; a value whose scheme is Bearer is never answered as "no key"
// (that answer carries no error= and tells the client to send a key it
// did send). FuzzBearerToken (header_test.go) covers a single value more
// loosely.
func FuzzAuthorization(f *testing.F) {
	for _, s := range []string{
		"Bearer ps_live_x", "bearer ps_live_x", "BEARER ps_live_x", "Bearer  ps_live_x", " Bearer ps_live_x ",
		"Bearer\tps_live_x", "Bearer \tps_live_x\t", "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "",
		"Bearer a\nBearer b", "Bearer a\n", "\n", "Bearer ps_live_x\x00", "Bearerps_live_x", "Bearer: ps_live_x",
		"Bearer ps_live_\u00e9\u00e9", "Bearer a b", "Token ps_live_x",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		vals := strings.Split(in, "\n")
		token, o := bearerToken(http.Header{"Authorization": vals})
		if len(vals) > 1 {
			if o != outcomeMultipleAuth || token != "" {
				t.Fatalf("%d Authorization headers %q: got %q, outcome %d; want outcomeMultipleAuth", len(vals), vals, token, o)
			}
			return
		}
		v := vals[0]
		switch o {
		case outcomeAdmitted:
			if token == "" || strings.Trim(token, " \t") != token {
				t.Fatalf("bearerToken(%q) returned token %q: want it non-empty, without surrounding blanks", v, token)
			}
			rest, ok := cutScheme(v)
			if !ok || strings.Trim(rest, " \t") != token {
				t.Fatalf("bearerToken(%q) returned token %q, which is not what follows the Bearer scheme", v, token)
			}
		case outcomeMissing, outcomeInvalid:
			if token != "" {
				t.Fatalf("bearerToken(%q) rejected the value but returned token %q", v, token)
			}
			if _, ok := cutScheme(v); ok && o == outcomeMissing {
				t.Fatalf("bearerToken(%q): the scheme is Bearer, but the answer is missing_api_key (no key sent)", v)
			}
		default:
			t.Fatalf("bearerToken(%q): unexpected outcome %d for one header", v, o)
		}
	})
}

// cutScheme reports whether v, without surrounding blanks, starts with the
// Bearer scheme (any case) followed by a blank or nothing, and returns the
// rest. It is the test's own reading of RFC 6750 §2.1 with the contract's
// case-insensitive scheme, tolerant of a tab where a space belongs.
func cutScheme(v string) (string, bool) {
	v = strings.Trim(v, " \t")
	if len(v) < len("Bearer") || !strings.EqualFold(v[:len("Bearer")], "Bearer") {
		return "", false
	}
	rest := v[len("Bearer"):]
	if rest != "" && rest[0] != ' ' && rest[0] != '\t' {
		return "", false
	}
	return rest, true
}

// ---- keys and their checksum ----

// FuzzKeyChecksum builds keys from fuzzed random parts with the checksum
// computed independently of the code under test (checksumOf), and checks
// the properties of README, Keys: every such key parses as an issued key with
// the SHA-256 of the whole key; a key NewKey issues parses the same way;
// and a change of any one character of either fails: never an issued key
// again, and with legacy keys off never accepted at all. (CRC-32 detects
// every change of one byte, so no change can keep the checksum valid.)
func FuzzKeyChecksum(f *testing.F) {
	f.Add("0123456789abcdefghijABCDEFGHIJ01", uint8(0), byte('x'), true)
	f.Add("zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz", uint8(45), byte('0'), false)
	f.Add("00000000000000000000000000000000", uint8(8), byte('-'), true)
	f.Add("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", uint8(3), byte('L'), false)
	f.Add("short", uint8(200), byte(0), true)
	f.Fuzz(func(t *testing.T, random string, pos uint8, b byte, live bool) {
		mode := ModeTest
		if live {
			mode = ModeLive
		}
		// Fold the fuzzed string into 32 base62 characters.
		var body [randomLen]byte
		for i := range body {
			var c byte
			if len(random) > 0 {
				c = random[i%len(random)] + byte(i/len(random))
			}
			body[i] = base62[int(c)%len(base62)]
		}
		prefix := "ps_" + mode.String() + "_" + string(body[:])
		built := prefix + checksumOf(prefix)
		issued, err := NewKey(mode)
		if err != nil {
			t.Fatal(err)
		}
		for _, key := range []string{built, issued} {
			for _, legacy := range []bool{false, true} {
				k, err := ParseKey(key, legacy)
				if err != nil || k.Legacy || k.Mode != mode || k.Hash != sha256.Sum256([]byte(key)) {
					t.Fatalf("ParseKey(%q, %v) = %+v, %v; want an issued %s key with the SHA-256 of the key", key, legacy, k, err, mode)
				}
			}
			i := int(pos) % len(key)
			if key[i] == b {
				continue // not a change
			}
			changed := key[:i] + string(b) + key[i+1:]
			if k, err := ParseKey(changed, false); err == nil {
				t.Fatalf("%q, one character off the issued %q, parsed as %+v with legacy keys off", changed, key, k)
			}
			if k, err := ParseKey(changed, true); err == nil && !k.Legacy {
				t.Fatalf("%q, one character off the issued %q, parsed as an issued key", changed, key)
			}
		}
		// The checksum is the one any tool can compute (README, Keys).
		if got := issued[40:]; got != checksumOf(issued[:40]) || crc32.ChecksumIEEE([]byte(issued[:40])) != crcIEEE([]byte(issued[:40])) {
			t.Fatalf("NewKey(%s) = %q: checksum %s, want %s", mode, issued, got, checksumOf(issued[:40]))
		}
	})
}

// ---- keys in the query ----

// FuzzCredentialsInQuery checks the query check against the test's own
// model of README, Errors: a query in which a common parser would find a
// parameter named api_key, access_token or key (in any case, after
// percent-decoding, separated by & or by ; as some frameworks do, with or
// without a [] suffix) is refused. The reverse is loose on purpose: a
// query that does not mention key or token in any form is never refused.
func FuzzCredentialsInQuery(f *testing.F) {
	for _, s := range []string{
		"", "page=2", "api_key=x", "API_KEY=x", "Access_Token=x", "key", "key=", "a=1&key=2",
		"a=1;api_key=x", "access_token[]=x", "api%5Fkey=x", "api%5fkey=x", "%61pi_key=x", "ke%79=x",
		"key%5B%5D=x", "a=1&&key=x", "&key=x", "monkey=1&key_id=2&keys=3", "api+key=x", "api_key%zz=x",
		"a=key&b=access_token", "%",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, q string) {
		got := credentialsInQuery(q)
		if want := queryCarriesCredentials(q); want && !got {
			t.Fatalf("credentialsInQuery(%q) = false; a parser would find a key parameter in it", q)
		}
		if got {
			lower := strings.ToLower(q)
			for _, part := range strings.FieldsFunc(q, func(r rune) bool { return r == '&' || r == ';' || r == '=' }) {
				if u, err := url.QueryUnescape(part); err == nil {
					lower += " " + strings.ToLower(u)
				}
			}
			if !strings.Contains(lower, "key") && !strings.Contains(lower, "token") {
				t.Fatalf("credentialsInQuery(%q) = true, but nothing in it names a key", q)
			}
		}
	})
}

// queryCarriesCredentials is the model of FuzzCredentialsInQuery.
func queryCarriesCredentials(q string) bool {
	for _, pair := range strings.FieldsFunc(q, func(r rune) bool { return r == '&' || r == ';' }) {
		name, _, _ := strings.Cut(pair, "=")
		if n, err := url.QueryUnescape(name); err == nil {
			name = n
		}
		name = strings.TrimSuffix(name, "[]")
		for _, p := range credentialParams {
			if strings.EqualFold(name, p) {
				return true
			}
		}
	}
	return false
}

// ---- the Caddyfile ----

// FuzzCaddyfile feeds the postscale directive's block (with its store and
// limiter sub-parsers) arbitrary tokens. It must never panic; a config it
// accepts must be one Caddy can load as it is: it validates, its values
// are in range, its store and limiter are known modules whose JSON decodes
// strictly, its JSON round-trips, and written back out as a Caddyfile it
// parses to the same config.
func FuzzCaddyfile(f *testing.F) {
	for _, s := range []string{
		"",
		"cache_ttl 5m\nnegative_ttl 30s\nlookup_timeout 1s",
		"store sqlite /var/lib/postscale/keys.db {\npoll_interval 100ms\n}",
		"store sqlite",
		"store postgres \"host=db user=gw dbname=keys\" {\nmax_conns 4\n}",
		"store postgres {env.PS_DSN}",
		"limiter local",
		"limiter redis redis://127.0.0.1:6379/0 {\nreplicas 3\ntimeout 50ms\nprefix ps:\n}",
		"plan bulk 1000 2000\nplan starter 5",
		"plan gold 0.5",
		"legacy_keys\nforward_authorization",
		"require_scope emails:send {\nmethod POST\npath /v1/emails*\n}",
		"require_scope emails:read",
		"cache_ttl 0",
		"cache_ttl -1s",
		"plan a 1e308 1",
		"plan a NaN",
		"store sqlite a b",
		"limiter redis",
		"store",
		"store {\n}",
		"plan bulk 10 {\n}",
		"cache_ttl 1s\ncache_ttl 2s",
		"}",
		"{",
		"lookup_timeout `1s`",
		"store sqlite `/path with spaces/keys.db`",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, block string) {
		input := "postscale {\n" + block + "\n}"
		h, err := parseBlock(input)
		if err != nil {
			return // refused: fine, as long as nothing panicked
		}
		checkAcceptedConfig(t, input, h)
		out, ok := renderCaddyfile(h)
		if !ok {
			return // something the renderer does not write: JSON checks only
		}
		again, err := parseBlock(out)
		if err != nil {
			t.Fatalf("config accepted from\n%s\nwritten back as\n%s\nis refused: %v", input, out, err)
		}
		if a, b := mustJSON(t, h), mustJSON(t, again); !bytes.Equal(a, b) {
			t.Fatalf("config accepted from\n%s\nwritten back as\n%s\nparses differently:\n%s\n%s", input, out, a, b)
		}
	})
}

// parseBlock lexes input and runs the directive's parser on it. (It does
// not use caddyfile.NewTestDispenser, which calls log.Fatal on input the
// lexer refuses.)
func parseBlock(input string) (*Handler, error) {
	tokens, err := caddyfile.Tokenize([]byte(input), "Caddyfile")
	if err != nil {
		return nil, err
	}
	h := new(Handler)
	if err := h.UnmarshalCaddyfile(caddyfile.NewDispenser(tokens)); err != nil {
		return nil, err
	}
	return h, nil
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatalf("marshalling %+v: %v", v, err)
	}
	return b
}

// checkAcceptedConfig checks that an accepted config is one Caddy can load.
func checkAcceptedConfig(t *testing.T, input string, h *Handler) {
	t.Helper()
	if err := h.Validate(); err != nil {
		t.Fatalf("accepted\n%s\nbut Validate refuses it: %v", input, err)
	}
	for name, d := range map[string]caddy.Duration{"cache_ttl": h.CacheTTL, "negative_ttl": h.NegativeTTL, "lookup_timeout": h.LookupTimeout} {
		if d < 0 {
			t.Fatalf("accepted\n%s\nwith %s %v", input, name, time.Duration(d))
		}
	}
	for name, p := range h.Plans {
		if !planNamePattern.MatchString(name) {
			t.Fatalf("accepted\n%s\nwith plan name %q", input, name)
		}
		if _, err := p.withDefaultBurst(); err != nil {
			t.Fatalf("accepted\n%s\nwith plan %s %+v: %v", input, name, p, err)
		}
	}
	for _, sr := range h.RequireScopes {
		if !validScope(sr.Scope) {
			t.Fatalf("accepted\n%s\nwith scope %q", input, sr.Scope)
		}
	}
	if err := h.resolvePlans(); err != nil {
		t.Fatalf("accepted\n%s\nbut its plans do not resolve: %v", input, err)
	}
	for ns, raw := range map[string]json.RawMessage{"postscale.stores": h.StoreRaw, "postscale.limiters": h.LimiterRaw} {
		if raw != nil {
			decodeModule(t, input, ns, raw)
		}
	}
	b := mustJSON(t, h)
	var again Handler
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&again); err != nil {
		t.Fatalf("accepted\n%s\nas %s, which does not decode: %v", input, b, err)
	}
	if b2 := mustJSON(t, &again); !bytes.Equal(b, b2) {
		t.Fatalf("accepted\n%s\nas %s; decoded and encoded again it is %s", input, b, b2)
	}
}

// decodeModule checks that raw names a registered module of namespace ns
// by its "backend" and decodes strictly into it, as Caddy's loader would.
func decodeModule(t *testing.T, input, ns string, raw json.RawMessage) {
	t.Helper()
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil {
		t.Fatalf("accepted\n%s\nwith %s %s: %v", input, ns, raw, err)
	}
	var backend string
	if err := json.Unmarshal(fields["backend"], &backend); err != nil {
		t.Fatalf("accepted\n%s\nwith %s %s: no backend: %v", input, ns, raw, err)
	}
	info, err := caddy.GetModule(ns + "." + backend)
	if err != nil {
		t.Fatalf("accepted\n%s\nwith an unknown module %s.%s", input, ns, backend)
	}
	delete(fields, "backend")
	rest, _ := json.Marshal(fields)
	dec := json.NewDecoder(bytes.NewReader(rest))
	dec.DisallowUnknownFields()
	if err := dec.Decode(info.New()); err != nil {
		t.Fatalf("accepted\n%s\nwith %s %s, which the module does not take: %v", input, ns, raw, err)
	}
}

// renderCaddyfile writes h back out as a postscale block, or reports
// false for what it cannot write (require_scope matchers, a value that
// backquotes cannot hold, a field added since this was written).
func renderCaddyfile(h *Handler) (string, bool) {
	var known = map[string]bool{
		"store": true, "cache_ttl": true, "negative_ttl": true, "lookup_timeout": true, "limiter": true,
		"legacy_keys": true, "forward_authorization": true, "plans": true, "require_scopes": true,
	}
	var fields map[string]json.RawMessage
	b, _ := json.Marshal(h)
	if json.Unmarshal(b, &fields) != nil {
		return "", false
	}
	for k := range fields {
		if !known[k] {
			return "", false
		}
	}
	ok := true
	q := func(s string) string {
		if strings.Contains(s, "`") {
			ok = false
		}
		return "`" + s + "`"
	}
	var sb strings.Builder
	sb.WriteString("postscale {\n")
	dur := func(name string, d caddy.Duration) {
		if d != 0 {
			fmt.Fprintf(&sb, "%s %s\n", name, time.Duration(d))
		}
	}
	dur("cache_ttl", h.CacheTTL)
	dur("negative_ttl", h.NegativeTTL)
	dur("lookup_timeout", h.LookupTimeout)
	if h.LegacyKeys {
		sb.WriteString("legacy_keys\n")
	}
	if h.ForwardAuthorization {
		sb.WriteString("forward_authorization\n")
	}
	for name, p := range h.Plans {
		fmt.Fprintf(&sb, "plan %s %s", q(name), strconv.FormatFloat(p.Rate, 'g', -1, 64))
		if p.Burst != 0 {
			fmt.Fprintf(&sb, " %d", p.Burst)
		}
		sb.WriteString("\n")
	}
	for _, sr := range h.RequireScopes {
		if sr.MatchRaw != nil {
			return "", false
		}
		fmt.Fprintf(&sb, "require_scope %s\n", q(sr.Scope))
	}
	module := func(directive string, raw json.RawMessage, opts map[string]string) {
		if raw == nil {
			return
		}
		var m map[string]any
		if json.Unmarshal(raw, &m) != nil {
			ok = false
			return
		}
		backend, _ := m["backend"].(string)
		fmt.Fprintf(&sb, "%s %s", directive, q(backend))
		delete(m, "backend")
		for _, arg := range []string{"path", "dsn", "url"} {
			if v, has := m[arg]; has {
				fmt.Fprintf(&sb, " %s", q(fmt.Sprint(v)))
				delete(m, arg)
			}
		}
		if len(m) == 0 {
			sb.WriteString("\n")
			return
		}
		sb.WriteString(" {\n")
		for k, v := range m {
			name, known := opts[k]
			if !known {
				ok = false
				return
			}
			switch v := v.(type) {
			case float64:
				if name == "poll_interval" || name == "timeout" {
					fmt.Fprintf(&sb, "%s %s\n", name, time.Duration(int64(v)))
				} else {
					fmt.Fprintf(&sb, "%s %s\n", name, strconv.FormatFloat(v, 'f', -1, 64))
				}
			default:
				fmt.Fprintf(&sb, "%s %s\n", name, q(fmt.Sprint(v)))
			}
		}
		sb.WriteString("}\n")
	}
	module("store", h.StoreRaw, map[string]string{"poll_interval": "poll_interval", "max_conns": "max_conns"})
	module("limiter", h.LimiterRaw, map[string]string{"replicas": "replicas", "timeout": "timeout", "prefix": "prefix"})
	sb.WriteString("}\n")
	return sb.String(), ok
}

// ---- the admin API's JSON bodies ----

// adminFuzzRoutes are the management calls FuzzAdminBody sends, by the
// fuzzed route number. {id} is the fuzzed id; calls without it ignore it.
var adminFuzzRoutes = []struct{ method, path string }{
	{http.MethodPost, "accounts"},
	{http.MethodPatch, "accounts/{id}"},
	{http.MethodGet, "accounts/{id}"},
	{http.MethodPost, "keys"},
	{http.MethodGet, "keys?account={id}"},
	{http.MethodGet, "keys/{id}"},
	{http.MethodDelete, "keys/{id}"},
	{http.MethodPost, "keys/{id}/roll"},
	{http.MethodPost, "keys/import"},
	{http.MethodPost, "keys/revoke"},
}

// bodyRoutes are the calls that read their body (roll only when it has
// one), by method and path: GET accounts/{id} ignores a body that PATCH
// reads.
var bodyRoutes = map[string]bool{"POST accounts": true, "PATCH accounts/{id}": true, "POST keys": true, "POST keys/{id}/roll": true, "POST keys/import": true, "POST keys/revoke": true}

// keyShaped finds what looks like a Postscale key (of at least 20
// characters after its prefix) in a message.
var keyShaped = regexp.MustCompile(`ps_(live|test)_[0-9A-Za-z._~+/-]{20,}`)

// FuzzAdminBody sends fuzzed management calls (route, id, JSON body) to the
// admin API's handler in-process, against a running config with a SQLite
// store, and checks what a caller may rely on: nothing panics; bad input
// is a 4xx, never a 5xx; a body that is not exactly one JSON value is
// refused; an error never shows a key it was given (in the body or the
// path); an account is created only on a plan the gateway knows; a key
// created with an expiry reads back with that same expiry; and no answer
// but a created or rolled key carries a key.
func FuzzAdminBody(f *testing.F) {
	// A fixed issued-form key, so the seeds are the same on every run.
	issued := "ps_live_rd2Kp1hT7UkxfXYfxCVJJTQbXhIZp3C7"
	issued += checksumOf(issued)
	seeds := []struct {
		route uint8
		id    string
		body  string
	}{
		{0, "", `{"id":"fuzzco","plan":"growth"}`},
		{0, "", `{"id":"bigco","plan":"enterprise","rate":50,"burst":100}`},
		{0, "", `{"id":"gold","plan":"gold"}`},
		{0, "", `{"id":"x","plan":"growth"} trailing`},
		{0, "", `{"id":"x","plan":"growth"}{"id":"y","plan":"growth"}`},
		{0, "", `{"id":"x","plan":"enterprise","rate":1e400}`},
		{0, "", `{"id":"x","plan":"enterprise","rate":-1}`},
		{0, "", `[]`},
		{0, "", `null`},
		{0, "", ``},
		{1, "acme", `{"plan":"scale"}`},
		{1, "acme", `{"rate":null}`},
		{1, "acme", `{"plan":"enterprise","rate":1e9,"burst":2147483647}`},
		{2, "acme", ``},
		{2, "../keys", ``},
		{3, "", `{"account":"acme","name":"fuzz","mode":"live"}`},
		{3, "", `{"account":"acme","name":"fuzz","mode":"test","scopes":["emails:send"],"expires_at":"2030-01-01T00:00:00Z"}`},
		{3, "", `{"account":"acme","name":"far","expires_at":"9999-12-31T23:59:59Z"}`},
		{3, "", `{"account":"acme","name":"past","expires_at":"1970-01-01T00:00:00Z"}`},
		{3, "", `{"account":"acme","name":"odd","expires_at":"0001-01-01T00:00:00Z"}`},
		{3, "", `{"account":"` + issued + `","name":"n"}`},
		{3, "", `{"account":"acme","name":"\u0000"}`},
		{3, "", `{"account":"acme","name":"n","scopes":[""]}`},
		{4, "acme", ``},
		{5, issued, ``},
		{5, "key_doesnotexist", ``},
		{6, issued, ``},
		{6, "ps_live_abc123xyz0123456789abcdefghij", ``},
		{7, "key_doesnotexist", `{"expires_in":"1h"}`},
		{7, issued, `{"expires_in":"1h"}`},
		{7, "key_x", `{"expires_in":"2562047h48m"}`},
		{7, "key_x", `{"expires_in":"-1s"}`},
		{8, "", `{"keys":[{"account":"acme","name":"legacy","key":"ps_live_fuzzlegacy0123456789"}]}`},
		{8, "", `{"keys":[{"account":"acme","name":"legacy","key":"` + issued + `x"}]}`},
		{8, "", `{"keys":[{"account":"acme","name":"h","mode":"live","hash":"` + strings.Repeat("0f", 32) + `"}]}`},
		{8, "", `{"keys":[{"account":"nobody","name":"legacy","key":"ps_test_fuzzlegacy0123456789"}]}`},
		{8, "", `{"keys":[]}`},
		{9, "", `{"key":"` + issued + `"}`},
		{9, "", `{"key":"ps_live_abc123xyz"}`},
		{9, "", `{}`},
	}
	for _, s := range seeds {
		f.Add(s.route, s.id, []byte(s.body))
	}
	a := startAdminFuzzConfig(f)
	f.Fuzz(func(t *testing.T, route uint8, id string, body []byte) {
		rt := adminFuzzRoutes[int(route)%len(adminFuzzRoutes)]
		path := strings.ReplaceAll(rt.path, "{id}", url.PathEscape(id))
		if strings.Contains(rt.path, "?") {
			path = strings.ReplaceAll(rt.path, "{id}", url.QueryEscape(id))
		}
		w := httptest.NewRecorder()
		r := httptest.NewRequest(rt.method, adminPrefix+path, bytes.NewReader(body))
		status, msg := a.call(w, r)
		what := fmt.Sprintf("%s %s %q", rt.method, path, body)
		if status >= 500 {
			t.Fatalf("%s: %d %s; bad input must be a 4xx", what, status, msg)
		}
		if bodyRoutes[rt.method+" "+rt.path] && len(body) > 0 && !oneJSONValue(body) && status < 400 && status != 0 {
			t.Fatalf("%s: %d; a body that is not exactly one JSON value must be refused", what, status)
		}
		if status >= 400 {
			for _, in := range []string{id, string(body)} {
				for _, k := range keyShaped.FindAllString(in, -1) {
					if strings.Contains(msg, k) || strings.Contains(msg, k[len(k)-20:]) {
						t.Fatalf("%s: error %q shows the key %q it was given", what, msg, k)
					}
				}
			}
			return
		}
		out := w.Body.Bytes()
		if rt.method != http.MethodPost || rt.path == "accounts" || rt.path == "keys/import" || rt.path == "keys/revoke" {
			for _, k := range keyShaped.FindAll(out, -1) {
				if !bytes.Contains(body, k) && !strings.Contains(id, string(k)) {
					t.Fatalf("%s: answer %s carries a key", what, out)
				}
			}
		}
		switch rt.path {
		case "accounts":
			var acct Account
			if err := json.Unmarshal(out, &acct); err != nil {
				t.Fatalf("%s: answer %s: %v", what, out, err)
			}
			if !a.knownPlan(acct.Plan) {
				t.Fatalf("%s: account created on plan %q, which no handler defines (every request of it would get 503)", what, acct.Plan)
			}
		case "keys":
			var req KeyRequest
			var created CreatedKey
			if json.Unmarshal(body, &req) != nil || json.Unmarshal(out, &created) != nil {
				return
			}
			if _, err := ParseKey(created.Key, false); err != nil {
				t.Fatalf("%s: created key %q does not parse: %v", what, created.Key, err)
			}
			if req.ExpiresAt != nil {
				w := httptest.NewRecorder()
				status, msg := a.call(w, httptest.NewRequest(http.MethodGet, adminPrefix+"keys/"+created.ID, nil))
				var rec KeyRecord
				if status != http.StatusOK || json.Unmarshal(w.Body.Bytes(), &rec) != nil {
					t.Fatalf("%s: reading the created key back: %d %s", what, status, msg)
				}
				if rec.ExpiresAt == nil || !rec.ExpiresAt.Equal(*req.ExpiresAt) {
					t.Fatalf("%s: accepted expires_at %v, but the key reads back expiring at %v", what, req.ExpiresAt, rec.ExpiresAt)
				}
			}
		}
	})
}

// oneJSONValue reports whether b is exactly one JSON value, blanks aside.
func oneJSONValue(b []byte) bool {
	dec := json.NewDecoder(bytes.NewReader(b))
	var v json.RawMessage
	if dec.Decode(&v) != nil {
		return false
	}
	return len(bytes.TrimLeft(b[dec.InputOffset():], " \t\r\n")) == 0
}

// adminFuzz is the admin API of a running config, called in-process.
type adminFuzz struct {
	api   *adminAPI
	plans map[string]bool
}

// call serves r and returns the status and, for an error, its message.
func (a *adminFuzz) call(w *httptest.ResponseRecorder, r *http.Request) (int, string) {
	err := a.api.serve(w, r)
	if err == nil {
		return w.Code, ""
	}
	if apiErr, ok := err.(caddy.APIError); ok {
		status := apiErr.HTTPStatus
		if status == 0 {
			status = http.StatusInternalServerError
		}
		msg := apiErr.Message
		if apiErr.Err != nil {
			msg += " " + apiErr.Err.Error()
		}
		return status, msg
	}
	return http.StatusInternalServerError, err.Error()
}

func (a *adminFuzz) knownPlan(p string) bool { return a.plans[p] || p == "enterprise" }

// startAdminFuzzConfig runs a Caddy config (no admin listener, nothing
// persisted) with one postscale handler on a SQLite store in a temporary
// directory, with an account acme, and returns its admin API. Every fuzz
// worker process runs its own.
func startAdminFuzzConfig(f *testing.F) *adminFuzz {
	f.Helper()
	dir := f.TempDir()
	cfg := map[string]any{
		"admin": map[string]any{"disabled": true, "config": map[string]any{"persist": false}},
		"logging": map[string]any{"logs": map[string]any{"default": map[string]any{
			"writer": map[string]any{"output": "discard"},
		}}},
		"apps": map[string]any{"http": map[string]any{"servers": map[string]any{"fuzz": map[string]any{
			"listen": []string{"127.0.0.1:0"},
			"routes": []any{map[string]any{"handle": []any{map[string]any{
				"handler": "postscale",
				"store":   map[string]any{"backend": "sqlite", "path": filepath.Join(dir, "keys.db")},
				"plans":   map[string]any{"bulk": map[string]any{"rate": 1000}},
			}}}},
		}}}},
	}
	b, _ := json.Marshal(cfg)
	if err := caddy.Load(b, true); err != nil {
		f.Fatalf("loading the config: %v", err)
	}
	f.Cleanup(func() { _ = caddy.Stop() })
	api := &adminAPI{}
	if err := api.Provision(caddy.ActiveContext()); err != nil {
		f.Fatal(err)
	}
	a := &adminFuzz{api: api, plans: map[string]bool{"bulk": true}}
	for p := range DefaultPlans {
		a.plans[p] = true
	}
	w := httptest.NewRecorder()
	if status, msg := a.call(w, httptest.NewRequest(http.MethodPost, adminPrefix+"accounts", strings.NewReader(`{"id":"acme","plan":"growth"}`))); status != http.StatusCreated {
		f.Fatalf("creating account acme: %d %s", status, msg)
	}
	return a
}
