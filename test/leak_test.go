package test

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	postscale "github.com/postscale/caddy-postscale"
)

// TestNoKeyLeaks drives a gateway, logging everything at DEBUG, with
// traffic of many keys (valid, revoked, rolled, expired, legacy, unknown,
// malformed, in query strings and cookies), a store outage, and every
// management error path of the admin API and the CLI, each fed keys where
// they do not belong. Then no key — whole, or any 20 characters of its
// body — may appear in any log, any CLI output but the one answer that
// creates or rolls it, any admin answer but that one, the metrics, or any
// file under the data directory (the store keeps SHA-256 hashes only; its
// file's bytes are searched too). README, Keys: a key is never logged, never
// written to disk, never put in an error message.
func TestNoKeyLeaks(t *testing.T) {
	dataDir := t.TempDir()
	inputDir := t.TempDir() // the operator's import files: they hold keys by design
	store := filepath.Join(dataDir, "keys.db")
	caddyLog := filepath.Join(dataDir, "caddy.log")
	accessLog := filepath.Join(dataDir, "access.log")
	backend := newRecorder(t, "mail")
	// The access log drops query strings, as SECURITY.md tells operators
	// to (a client may put a key there; the gateway refuses the request,
	// but Caddy logs it first).
	loadConfig(t, globalOptions("\tdebug\n"+logOptions(caddyLog))+fmt.Sprintf(`:{$POSTSCALE_TEST_HTTP_PORT} {
	log {
		output file %s
		format filter {
			wrap json
			request>uri regexp "\?.*" "?(query removed)"
		}
	}
	postscale {
		store sqlite %s
		legacy_keys
		plan bulk 100000
		# This client sends hundreds of unknown keys on purpose.
		failed_auth off
	}
	reverse_proxy %s
}
`, accessLog, store, backend.addr()), "caddyfile")

	secrets := newSecrets()
	var outputs []namedOutput // everything that must not show a key
	keep := func(what, s string) { outputs = append(outputs, namedOutput{what, s}) }

	createAccount(t, "acme", "bulk")
	createAccount(t, "beta", "growth")

	// ---- keys of every kind, each used ----
	var valid []createdKey
	for i := range 20 {
		mode := "live"
		if i%4 == 0 {
			mode = "test"
		}
		k := createKey(t, []string{"acme", "beta"}[i%2], fmt.Sprintf("server %d", i), mode)
		secrets.add(k.Key)
		valid = append(valid, k)
	}
	for _, k := range valid {
		if r := get(t, "/v1/emails", bearer(k.Key)); r.status != http.StatusOK {
			t.Fatalf("a new key answers %d %s", r.status, r.body)
		}
	}
	for _, k := range valid[:3] {
		revokeKey(t, k.ID)
		assertRejected(t, get(t, "/v1/emails", bearer(k.Key)), revokedKey)
	}
	for _, k := range valid[3:5] {
		n := rollKey(t, k.ID, "1h")
		secrets.add(n.Key)
		for _, key := range []string{k.Key, n.Key} {
			if r := get(t, "/v1/emails", bearer(key)); r.status != http.StatusOK {
				t.Fatalf("a rolled key answers %d", r.status)
			}
		}
	}
	expiring := postKey(t, map[string]any{"account": "acme", "name": "short-lived", "mode": "live", "expires_at": time.Now().Add(time.Second)})
	secrets.add(expiring.Key)
	legacy := []string{"ps_live_legacyAAAAAAAAAAAAAAAAAAAAAAAA01", "ps_test_legacyBBBBBBBBBBBBBBBBBBBBBBBB02", "ps_live_legacy-with.dots~and+slash/CCCC03"}
	for _, l := range legacy {
		secrets.add(l)
	}
	adminCall(t, http.MethodPost, "/postscale/keys/import", map[string]any{"keys": []map[string]any{
		{"account": "acme", "name": "legacy a", "key": legacy[0]},
		{"account": "acme", "name": "legacy b", "key": legacy[1]},
		{"account": "beta", "name": "legacy c", "key": legacy[2]},
	}}, http.StatusCreated, nil)
	for _, l := range legacy {
		if r := get(t, "/v1/emails", bearer(l)); r.status != http.StatusOK {
			t.Fatalf("an imported legacy key answers %d %s", r.status, r.body)
		}
	}
	for range 100 {
		k, _ := postscale.NewKey(postscale.ModeLive)
		secrets.add(k)
		assertRejected(t, get(t, "/v1/emails", bearer(k)), invalidKey)
	}
	for _, k := range valid[5:15] {
		bad := k.Key[:len(k.Key)-1] + otherBase62(k.Key[len(k.Key)-1])
		secrets.add(bad)
		assertRejected(t, get(t, "/v1/emails", bearer(bad)), invalidKey)
	}
	for i := range 10 {
		m := "ps_live_" + randomText(30+i)
		secrets.add(m)
		get(t, "/v1/emails", bearer(m))
	}
	time.Sleep(time.Until(expiring.CreatedAt.Add(1200 * time.Millisecond)))
	assertRejected(t, get(t, "/v1/emails", bearer(expiring.Key)), expiredKey)

	// ---- keys where they do not belong in requests ----
	k := valid[10].Key
	for _, q := range []string{
		"api_key=" + k, "access_token=" + k, "key=" + k, "API_KEY=" + k, "Access_Token=" + k,
		"to=a%40example.com&key=" + k, "%61pi_key=" + k, "api%5Fkey=" + k,
		"a=1;api_key=" + k, "access_token[]=" + k, // item 9 of the hardening issue
	} {
		rawHTTP(t, "GET /v1/emails?"+q+" HTTP/1.1\r\nHost: "+gatewayHost+"\r\n"+bearer(k)+"\r\nConnection: close\r\n\r\n")
		rawHTTP(t, "GET /v1/emails?"+q+" HTTP/1.1\r\nHost: "+gatewayHost+"\r\nConnection: close\r\n\r\n")
	}
	get(t, "/v1/emails", bearer(valid[11].Key), "Cookie: api_key="+valid[12].Key)
	get(t, "/v1/emails", "Cookie: session="+valid[12].Key)
	get(t, "/v1/emails", bearer(valid[11].Key), "Proxy-Authorization: Bearer "+valid[13].Key)
	get(t, "/v1/emails", bearer(valid[11].Key), bearer(valid[13].Key))
	get(t, "/v1/emails", "Authorization: Basic "+valid[14].Key)
	request(t, http.MethodPost, "/v1/emails", "api_key="+valid[14].Key, "Content-Type: application/x-www-form-urlencoded")

	// ---- a store outage, with uncached keys ----
	cold := createKey(t, "acme", "cold", "live")
	secrets.add(cold.Key)
	restore := breakStore(t, store)
	assertRejected(t, get(t, "/v1/emails", bearer(cold.Key)), storeUnavailable)
	for range 5 {
		u, _ := postscale.NewKey(postscale.ModeTest)
		secrets.add(u)
		get(t, "/v1/emails", bearer(u))
	}
	restore()
	if r := get(t, "/v1/emails", bearer(cold.Key)); r.status != http.StatusOK {
		t.Fatalf("after the outage the cold key answers %d", r.status)
	}

	// ---- the admin API's error paths, fed keys ----
	pasted := valid[15].Key
	unknownKey, _ := postscale.NewKey(postscale.ModeLive)
	secrets.add(unknownKey)
	for _, c := range []struct {
		method, path string
		body         any
	}{
		{"POST", "/postscale/accounts", `{"id":"x","plan":"` + pasted + `"}`},
		{"POST", "/postscale/accounts", `{"id":"` + pasted + `","plan":"growth","colour":1}`},
		{"POST", "/postscale/accounts", `{"id":"x","plan":"growth","` + pasted + `":1}`},
		{"POST", "/postscale/accounts", `{"id":"` + pasted},
		{"POST", "/postscale/accounts", `{"id":["` + pasted + `"]}`},
		{"PATCH", "/postscale/accounts/acme", `{"plan":"` + pasted + `"}`},
		{"PATCH", "/postscale/accounts/acme", `{"rate":"` + pasted + `"}`},
		{"POST", "/postscale/keys", `{"account":"` + pasted + `","name":"n"}`},
		{"POST", "/postscale/keys", `{"account":"acme","name":"n","mode":"` + pasted + `"}`},
		{"POST", "/postscale/keys", `{"account":"acme","name":"n","expires_at":"` + pasted + `"}`},
		{"POST", "/postscale/keys", `{"account":"acme","name":"n","scopes":["` + pasted + ` x"]}`},
		{"POST", "/postscale/keys/" + valid[16].ID + "/roll", `{"expires_in":"` + pasted + `"}`},
		{"POST", "/postscale/keys/" + valid[0].ID + "/roll", `{"expires_in":"1h"}`}, // revoked
		{"POST", "/postscale/keys/revoke", `{"key":"` + unknownKey + `"}`},
		{"POST", "/postscale/keys/revoke", `{"key":"` + pasted + `x"}`},
		{"POST", "/postscale/keys/import", `{"keys":[{"account":"acme","name":"dup","key":"` + legacy[0] + `"}]}`},
		{"POST", "/postscale/keys/import", `{"keys":[{"account":"acme","name":"m","mode":"test","key":"` + legacy[0] + `"}]}`},
		{"POST", "/postscale/keys/import", `{"keys":[{"account":"nobody","name":"a","key":"ps_live_legacyDDDDDDDDDDDDDDDDDDDDDD04"}]}`},
		{"POST", "/postscale/keys/import", `{"keys":[{"account":"acme","name":"a","key":"sk_live_` + pasted[8:] + `"}]}`},
		{"POST", "/postscale/keys/import", `{"keys":[{"account":"acme","name":"a","key":"` + legacy[1] + `","hash":"00"}]}`},
		{"POST", "/postscale/keys/import", `{"keys":[{"account":"acme","key":"` + legacy[1] + `"}]}`},
		{"POST", "/postscale/keys/import", `{"keys":[{"account":"acme","name":"a","key":"` + legacy[1] + `"}]} trailing`},
		{"POST", "/postscale/keys/import", `{"keys":[{"account":"acme","name":"a","key":` + legacy[1] + `}]}`},
	} {
		resp, b := adminDo(t, c.method, c.path, c.body)
		if resp.StatusCode < 400 {
			t.Logf("%s %s answered %d (not an error path)", c.method, c.path, resp.StatusCode)
		}
		keep(fmt.Sprintf("admin answer to %s %s %.40s… (%d)", c.method, c.path, c.body, resp.StatusCode), string(b))
	}
	secrets.add("ps_live_legacyDDDDDDDDDDDDDDDDDDDDDD04")
	// Keys where a name or a scope belongs: refused, or at least never
	// stored as given (item 5).
	for _, body := range []string{
		`{"account":"acme","name":"` + pasted + `"}`,
		`{"account":"acme","name":"copy of ` + pasted + `"}`,
		`{"account":"acme","name":"n","scopes":["` + pasted + `"]}`,
	} {
		resp, b := adminDo(t, http.MethodPost, "/postscale/keys", body)
		if resp.StatusCode == http.StatusCreated {
			// The answer holds the new key (allowed) and what was stored.
			var ck createdKey
			_ = json.Unmarshal(b, &ck)
			secrets.allow(ck.Key)
			keep("key record created with a key as its name or scope (item 5)", strings.ReplaceAll(string(b), ck.Key, ""))
		} else {
			keep("admin answer to a key as a name or scope (item 5)", string(b))
		}
	}
	// Reads: records, lists, accounts.
	for _, path := range []string{"/postscale/keys?account=acme", "/postscale/keys?account=beta", "/postscale/accounts/acme", "/postscale/keys/" + valid[3].ID} {
		_, b := adminDo(t, http.MethodGet, path, nil)
		keep("admin answer to GET "+path, string(b))
	}

	// ---- the CLI's error paths, fed keys ----
	importJSON := filepath.Join(inputDir, "import.json")
	importCSV := filepath.Join(inputDir, "import.csv")
	badCSV := filepath.Join(inputDir, "bad.csv")
	writeFile(t, importJSON, `[{"account":"acme","name":"again","key":"`+legacy[2]+`"}]`)
	writeFile(t, importCSV, "account,name,mode,key\nacme,x,test,"+legacy[0]+"\n")
	writeFile(t, badCSV, "account,name,key\nacme,\"unterminated,"+legacy[1]+"\n")
	typed := filepath.Join(inputDir, "typed.json")
	writeFile(t, typed, `[{"account":"acme","name":"a","key":"`+legacy[1]+`","mode":5}]`)
	for _, c := range []struct {
		args  []string
		stdin string
	}{
		{args: []string{"key", "revoke", pasted}},
		{args: []string{"key", "show", pasted}},
		{args: []string{"key", "roll", pasted, "--expires-in", "1h"}},
		{args: []string{"account", "show", pasted}},
		{args: []string{"key", "list", "--account", pasted}},
		{args: []string{"key", "create", "--account", pasted, "--name", "x"}},
		{args: []string{"key", "create", "--account", "acme", "--name", "x", "--expires-at", pasted}},
		{args: []string{"key", "create", "--account", "acme", "--name", "x", "--mode", pasted}},
		{args: []string{"key", "roll", valid[16].ID, "--expires-in", pasted}},
		{args: []string{"key", "import", importJSON}},
		{args: []string{"key", "import", importCSV}},
		{args: []string{"key", "import", badCSV}},
		{args: []string{"key", "import", typed}},
		{args: []string{"key", "revoke", "--key", "-"}, stdin: unknownKey + "\n"},
		{args: []string{"--store", store, "key", "revoke", pasted}},
		{args: []string{"--store", store, "key", "show", pasted}},
		{args: []string{"--store", store, "key", "create", "--account", pasted, "--name", "x"}},
		{args: []string{"--store", store, "key", "import", importJSON}},
	} {
		args := c.args
		if args[0] != "--store" {
			args = append([]string{"--address", adminAddr}, args...)
		}
		stdout, stderr, err := runCLIIn(c.stdin, args...)
		what := "caddy postscale " + strings.Join(redactAll(c.args, secrets), " ")
		keep(what+": stdout", stdout)
		keep(what+": stderr", stderr)
		if err != nil {
			keep(what+": error", err.Error())
		}
	}
	// The one CLI answer that may hold a key: the one it creates.
	out := cli(t, "--address", adminAddr, "key", "create", "--account", "acme", "--name", "cli")
	secrets.add(strings.TrimSpace(out))
	_, stderr, _ := runCLIIn("", "--address", adminAddr, "key", "list", "--account", "acme")
	keep("caddy postscale key list: stderr", stderr)
	stdout, _, _ := runCLIIn("", "--address", adminAddr, "key", "list", "--account", "acme")
	keep("caddy postscale key list: stdout", stdout)

	// ---- the metrics ----
	_, metrics := adminDo(t, http.MethodGet, "/metrics", nil)
	keep("GET /metrics", string(metrics))

	// Let the usage flush and the logs settle before reading the files.
	time.Sleep(300 * time.Millisecond)

	// ---- search ----
	t.Logf("searching for %d keys (%d 20-character pieces) in %d outputs and the files under the data directory", secrets.count(), len(secrets.pieces), len(outputs))
	leaks := map[string]int{}
	for _, o := range outputs {
		for _, hit := range secrets.find(o.text) {
			leaks[o.what+" shows "+hit]++
		}
	}
	var files []string
	_ = filepath.WalkDir(dataDir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		files = append(files, path)
		b, err := os.ReadFile(path)
		if err != nil {
			t.Errorf("reading %s: %v", path, err)
			return nil
		}
		if strings.HasSuffix(path, ".log") {
			// Name the log line: its logger and message.
			for _, line := range strings.Split(string(b), "\n") {
				hits := secrets.find(line)
				if len(hits) == 0 {
					continue
				}
				var l logLine
				_ = json.Unmarshal([]byte(line), &l)
				for _, hit := range hits {
					leaks[fmt.Sprintf("%s line %s %q holds %s", filepath.Base(path), l.Logger, l.Msg, hit)]++
				}
			}
			return nil
		}
		for _, hit := range secrets.find(string(b)) {
			leaks[filepath.Base(path)+" holds "+hit]++
		}
		return nil
	})
	var lines []string
	for l, n := range leaks {
		lines = append(lines, fmt.Sprintf("%s (%d×)", l, n))
	}
	sort.Strings(lines)
	for _, l := range lines {
		t.Errorf("key leaked: %s", l)
	}
	t.Logf("searched files: %s", strings.Join(relAll(dataDir, files), ", "))
	for _, f := range []string{caddyLog, accessLog} {
		if fi, err := os.Stat(f); err != nil || fi.Size() == 0 {
			t.Errorf("%s is empty or missing: the search proves nothing", f)
		}
	}
}

// namedOutput is something the test saw, by where it came from.
type namedOutput struct{ what, text string }

// secrets is every key the test used, and the 20-character pieces of
// their bodies, to search for.
type secretSet struct {
	keys    map[string]bool
	pieces  map[string]string // piece → redacted key it is from
	allowed map[string]bool   // keys shown once, in their creating answer
}

func newSecrets() *secretSet {
	return &secretSet{keys: map[string]bool{}, pieces: map[string]string{}, allowed: map[string]bool{}}
}

const pieceLen = 20

func (s *secretSet) add(key string) {
	if key == "" || s.keys[key] {
		return
	}
	s.keys[key] = true
	body := key[len("ps_live_"):]
	for i := 0; i+pieceLen <= len(body); i++ {
		s.pieces[body[i:i+pieceLen]] = postscale.Redact(key)
	}
}

// allow adds a key whose creating answer was seen and left out of the
// search.
func (s *secretSet) allow(key string) {
	s.allowed[key] = true
	s.add(key)
}

func (s *secretSet) count() int { return len(s.keys) }

// find returns the keys (redacted) whose whole form or any 20-character
// piece of whose body appears in text.
func (s *secretSet) find(text string) []string {
	seen := map[string]bool{}
	var out []string
	for i := 0; i+pieceLen <= len(text); i++ {
		if r, ok := s.pieces[text[i:i+pieceLen]]; ok && !seen[r] {
			seen[r] = true
			out = append(out, r)
		}
	}
	return out
}

// redactAll returns args with every key in them redacted.
func redactAll(args []string, s *secretSet) []string {
	out := make([]string, len(args))
	for i, a := range args {
		out[i] = a
		for k := range s.keys {
			if strings.Contains(a, k) {
				out[i] = strings.ReplaceAll(out[i], k, postscale.Redact(k))
			}
		}
	}
	return out
}

func relAll(dir string, paths []string) []string {
	out := make([]string, len(paths))
	for i, p := range paths {
		out[i], _ = filepath.Rel(dir, p)
	}
	return out
}

func writeFile(t *testing.T, path, s string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
}

// randomText returns n random characters of the legacy alphabet.
func randomText(n int) string {
	const alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz-._~+/"
	b := make([]byte, n)
	_, _ = rand.Read(b)
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return string(b)
}
