package main

import (
	"os"
	"strings"
	"testing"
)

// TestExampleLine: the line ./xcaddy.sh run prints for the repository's
// example Caddyfile, from its adapted JSON (the golden file the adapt test
// keeps equal to the Caddyfile).
func TestExampleLine(t *testing.T) {
	golden, err := os.ReadFile("../../test/testdata/adapt/example.caddyfiletest")
	if err != nil {
		t.Fatal(err)
	}
	_, adapted, ok := strings.Cut(string(golden), "\n----------\n")
	if !ok {
		t.Fatal("no JSON half in the example's golden file")
	}
	got, err := describe([]byte(adapted), "/home/ada/.local/share/caddy")
	if err != nil {
		t.Fatal(err)
	}
	want := "postscale on :8080; other sites on 127.0.0.1:8091, 127.0.0.1:8092; admin on 127.0.0.1:2019; store /home/ada/.local/share/caddy/postscale/keys.db"
	if got != want {
		t.Errorf("line for the example Caddyfile:\n got %s\nwant %s", got, want)
	}
}

func TestLine(t *testing.T) {
	site := func(handler string) string {
		return `{"apps":{"http":{"servers":{"gw":{"listen":["127.0.0.1:9000"],"routes":[{"handle":[{"handler":"subroute","routes":[{"handle":[` + handler + `]}]}]}]}}}}}`
	}
	cases := []struct {
		name, config, want string
		secret             string // must not appear in the line
	}{
		{
			name:   "sqlite path, postscale inside a subroute, admin at its default",
			config: site(`{"handler":"postscale","store":{"backend":"sqlite","path":"/var/lib/postscale/keys.db"}}`),
			want:   "postscale on 127.0.0.1:9000; admin on localhost:2019; store /var/lib/postscale/keys.db",
		},
		{
			name:   "admin off",
			config: `{"admin":{"disabled":true},` + site(`{"handler":"postscale"}`)[1:],
			want:   "postscale on 127.0.0.1:9000; admin off; store <Caddy data dir>/postscale/keys.db",
		},
		{
			name:   "postgres URL with a password",
			config: site(`{"handler":"postscale","store":{"backend":"postgres","dsn":"postgres://gateway:s3cret@db.internal:5432/postscale?sslmode=verify-full&password=s3cret"}}`),
			want:   "postscale on 127.0.0.1:9000; admin on localhost:2019; store postgres postgres://gateway@db.internal:5432/postscale?sslmode=verify-full",
			secret: "s3cret",
		},
		{
			name:   "postgres keyword DSN with a quoted password",
			config: site(`{"handler":"postscale","store":{"backend":"postgres","dsn":"host=db.internal password='s3 cret' dbname=postscale"}}`),
			want:   "postscale on 127.0.0.1:9000; admin on localhost:2019; store postgres host=db.internal dbname=postscale",
			secret: "s3",
		},
		{
			name:   "postgres DSN from the environment",
			config: site(`{"handler":"postscale","store":{"backend":"postgres","dsn":"{env.POSTSCALE_POSTGRES_DSN}"}}`),
			want:   "postscale on 127.0.0.1:9000; admin on localhost:2019; store postgres {env.POSTSCALE_POSTGRES_DSN}",
		},
		{
			name:   "a URL that does not parse",
			config: site(`{"handler":"postscale","store":{"backend":"postgres","dsn":"postgres://gateway:s3%zzcret@db/postscale"}}`),
			want:   "postscale on 127.0.0.1:9000; admin on localhost:2019; store postgres (a DSN that does not parse as a URL; not shown)",
			secret: "s3",
		},
		{
			name:   "no gateway",
			config: `{"apps":{"http":{"servers":{"a":{"listen":[":80"],"routes":[{"handle":[{"handler":"static_response"}]}]}}}}}`,
			want:   "no postscale handler in this config; other sites on :80; admin on localhost:2019",
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := describe([]byte(c.config), "")
			if err != nil {
				t.Fatal(err)
			}
			if got != c.want {
				t.Errorf("\n got %s\nwant %s", got, c.want)
			}
			if c.secret != "" && strings.Contains(got, c.secret) {
				t.Errorf("the line shows the password: %s", got)
			}
		})
	}
}
