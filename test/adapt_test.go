package test

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddytest"
)

// -update rewrites the JSON half of every golden file from the current
// adapter output. Review the diff before committing it.
var update = flag.Bool("update", false, "rewrite the expected JSON of testdata/adapt/*.caddyfiletest")

// golden files are in caddytest's integration format: a Caddyfile, a line
// of ten dashes, and either the expected JSON or text the adapt error must
// contain.
const goldenSeparator = "\n----------\n"

func readGolden(t *testing.T, path string) (caddyfile, expected string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	caddyfile, expected, ok := strings.Cut(string(data), goldenSeparator)
	if !ok {
		t.Fatalf("%s: no %q line between the Caddyfile and the expected result", path, strings.TrimSpace(goldenSeparator))
	}
	return caddyfile + "\n", strings.TrimSpace(expected)
}

func adapt(caddyfile string) ([]byte, error) {
	out, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfile), nil)
	return out, err
}

// TestCaddyfileAdapt adapts each testdata/adapt/*.caddyfiletest and
// compares the JSON, or checks that adapting fails with the expected
// message, which names the file and line ("Caddyfile:4").
func TestCaddyfileAdapt(t *testing.T) {
	files, err := filepath.Glob("testdata/adapt/*.caddyfiletest")
	if err != nil || len(files) == 0 {
		t.Fatalf("no golden files in testdata/adapt (%v)", err)
	}
	for _, path := range files {
		t.Run(strings.TrimSuffix(filepath.Base(path), ".caddyfiletest"), func(t *testing.T) {
			caddyfile, expected := readGolden(t, path)
			if strings.HasPrefix(expected, "{") {
				if *update {
					writeGolden(t, path, caddyfile)
					return
				}
				if !caddytest.CompareAdapt(t, path, caddyfile, "caddyfile", expected) {
					t.Errorf("%s: adapted JSON differs from the golden file (diff above; go test -run TestCaddyfileAdapt -update rewrites it)", path)
				}
				return
			}
			if !strings.Contains(expected, "Caddyfile:") {
				t.Fatalf("%s: an expected error must name the file and line, e.g. \"at Caddyfile:3\"", path)
			}
			_, err := adapt(caddyfile)
			if err == nil {
				t.Fatalf("adapting succeeded; want an error containing %q", expected)
			}
			if !strings.Contains(err.Error(), expected) {
				t.Errorf("adapt error:\n got %s\nwant it to contain %s", err, expected)
			}
		})
	}
}

func writeGolden(t *testing.T, path, caddyfile string) {
	out, err := adapt(caddyfile)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := json.Indent(&buf, out, "", "\t"); err != nil {
		t.Fatal(err)
	}
	body := strings.TrimSuffix(caddyfile, "\n") + goldenSeparator + buf.String() + "\n"
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
}

// exampleGolden holds the example Caddyfile as the repository ships it,
// with its adapted JSON. The tests check this copy, not ../Caddyfile: the
// README tells users to run that one and to edit it (legacy_keys, their
// own backend), and their edits must not fail the tests.
const exampleGolden = "testdata/adapt/example.caddyfiletest"

// TestShippedCaddyfile: the repository's Caddyfile is the example the
// tests check, so what the README tells people to run is what is tested.
// An edited Caddyfile is the user's own: the test skips, saying so. In CI
// (CI=true), on a clean clone, a difference means the two were committed
// apart, and it fails.
func TestShippedCaddyfile(t *testing.T) {
	shipped, _ := readGolden(t, exampleGolden)
	got, err := os.ReadFile("../Caddyfile")
	if err == nil && string(got) == shipped {
		return
	}
	msg := "../Caddyfile is not the example of " + exampleGolden
	if err != nil {
		msg = err.Error()
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s; the repository must ship the example the tests check: copy one into the other (then go test ./test -run TestCaddyfileAdapt -update, and review the JSON)", msg)
	}
	t.Skipf("%s; an edited Caddyfile is yours, and the tests check the shipped example instead (CI checks the two match)", msg)
}

// TestPostscaleOrderedFirst: in the adapted JSON of the example and of a
// site that writes postscale last, the postscale handler comes before
// every handle, route, respond and reverse_proxy of its site, without any
// `order` option (README, The `postscale` directive).
func TestPostscaleOrderedFirst(t *testing.T) {
	for _, path := range []string{exampleGolden, "testdata/adapt/no_order.caddyfiletest"} {
		t.Run(filepath.Base(path), func(t *testing.T) {
			caddyfile := readCaddyfile(t, path)
			if strings.Contains(caddyfile, "order ") {
				t.Fatalf("%s uses an order option; this test is about doing without", path)
			}
			out, err := adapt(caddyfile)
			if err != nil {
				t.Fatal(err)
			}
			var cfg struct {
				Apps struct {
					HTTP struct {
						Servers map[string]struct {
							Listen []string `json:"listen"`
							Routes []route  `json:"routes"`
						} `json:"servers"`
					} `json:"http"`
				} `json:"apps"`
			}
			if err := json.Unmarshal(out, &cfg); err != nil {
				t.Fatal(err)
			}
			found := 0
			for name, srv := range cfg.Apps.HTTP.Servers {
				found += checkPostscaleFirst(t, name, srv.Routes)
			}
			if found == 0 {
				t.Fatalf("no postscale handler in the adapted config of %s", path)
			}
		})
	}
}

// readCaddyfile reads a Caddyfile, or the Caddyfile half of a golden file.
func readCaddyfile(t *testing.T, path string) string {
	t.Helper()
	if strings.HasSuffix(path, ".caddyfiletest") {
		c, _ := readGolden(t, path)
		return c
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// route is the part of a Caddy JSON route the ordering check needs.
type route struct {
	Handle []struct {
		Handler string  `json:"handler"`
		Routes  []route `json:"routes"`
	} `json:"handle"`
}

// gated are the handlers a request must never reach before postscale.
var gated = map[string]bool{"subroute": true, "static_response": true, "reverse_proxy": true, "file_server": true}

// checkPostscaleFirst checks every route list under routes (subroutes
// too) that holds a postscale handler: no route before the postscale one
// may hand the request to a gated handler. It returns how many postscale
// handlers it found.
func checkPostscaleFirst(t *testing.T, where string, routes []route) int {
	t.Helper()
	found, first := 0, -1
	for i, r := range routes {
		for _, h := range r.Handle {
			if h.Handler == "postscale" {
				found++
				if first < 0 {
					first = i
				}
			}
			found += checkPostscaleFirst(t, where+"/"+h.Handler, h.Routes)
		}
	}
	for i := 0; i < first; i++ {
		for _, h := range routes[i].Handle {
			if gated[h.Handler] {
				t.Errorf("%s: route %d (%s) comes before the postscale handler (route %d)", where, i, h.Handler, first)
			}
		}
	}
	return found
}

// TestSQLiteStoreBlockParsesEveryLine: every line of the `store sqlite`
// block is parsed, so a typo on any line is an error, not ignored.
func TestSQLiteStoreBlockParsesEveryLine(t *testing.T) {
	_, err := adapt(`:8080 {
	postscale {
		store sqlite /var/lib/postscale/keys.db {
			poll_interval 100ms
			poll_every 1s
		}
	}
	reverse_proxy 127.0.0.1:8091
}
`)
	const want = `unrecognized sqlite store option "poll_every", at Caddyfile:5`
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("adapt error: got %v, want one containing %q", err, want)
	}
}
