package postscale

import (
	"bufio"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
)

func TestBearerToken(t *testing.T) {
	tests := []struct {
		name      string
		values    []string // Authorization header values; nil for none
		wantToken string
		want      outcome
	}{
		{name: "no header", want: outcomeMissing},
		{name: "basic scheme", values: []string{"Basic dXNlcjpwYXNz"}, want: outcomeWrongScheme},
		{name: "token scheme", values: []string{"Token ps_live_x"}, want: outcomeWrongScheme},
		{name: "longer scheme name", values: []string{"Bearerish ps_live_x"}, want: outcomeWrongScheme},
		{name: "scheme glued to the key", values: []string{"Bearerps_live_x"}, want: outcomeWrongScheme},
		{name: "bare key without scheme", values: []string{"ps_live_abc"}, want: outcomeWrongScheme},
		{name: "bearer", values: []string{"Bearer ps_live_abc"}, wantToken: "ps_live_abc", want: outcomeAdmitted},
		{name: "lowercase scheme", values: []string{"bearer ps_live_abc"}, wantToken: "ps_live_abc", want: outcomeAdmitted},
		{name: "uppercase scheme", values: []string{"BEARER ps_live_abc"}, wantToken: "ps_live_abc", want: outcomeAdmitted},
		{name: "extra spaces", values: []string{"  Bearer   ps_live_abc  "}, wantToken: "ps_live_abc", want: outcomeAdmitted},
		{name: "tabs around the value", values: []string{"\tBearer ps_live_abc\t"}, wantToken: "ps_live_abc", want: outcomeAdmitted},
		// RFC 6750 §2.1: "Bearer" 1*SP b64token. Other blanks make a
		// malformed Bearer credential: invalid, not missing.
		{name: "tab after the scheme", values: []string{"Bearer\tps_live_abc"}, want: outcomeInvalid},
		{name: "tabs after the scheme", values: []string{"Bearer\t\tps_live_abc"}, want: outcomeInvalid},
		{name: "space then tab", values: []string{"Bearer \tps_live_abc"}, want: outcomeInvalid},
		{name: "tab then space", values: []string{"Bearer\t ps_live_abc"}, want: outcomeInvalid},
		{name: "space, tab, space", values: []string{"Bearer \t ps_live_abc"}, want: outcomeInvalid},
		{name: "vertical tab", values: []string{"Bearer\vps_live_abc"}, want: outcomeInvalid},
		{name: "form feed", values: []string{"Bearer\fps_live_abc"}, want: outcomeInvalid},
		{name: "no-break space", values: []string{"Bearer\u00a0ps_live_abc"}, want: outcomeInvalid},
		{name: "NUL", values: []string{"Bearer\x00ps_live_abc"}, want: outcomeInvalid},
		{name: "comma", values: []string{"Bearer,ps_live_abc"}, want: outcomeInvalid},
		{name: "colon", values: []string{"Bearer:ps_live_abc"}, want: outcomeInvalid},
		{name: "equals sign", values: []string{"Bearer=ps_live_abc"}, want: outcomeInvalid},
		{name: "space inside the token", values: []string{"Bearer ps_live_ abc"}, want: outcomeInvalid},
		{name: "tab inside the token", values: []string{"Bearer ps_live_\tabc"}, want: outcomeInvalid},
		{name: "two tokens", values: []string{"Bearer ps_live_a ps_live_b"}, want: outcomeInvalid},
		{name: "bearer without token", values: []string{"Bearer"}, want: outcomeInvalid},
		{name: "bearer with blank token", values: []string{"Bearer    "}, want: outcomeInvalid},
		{name: "bearer with a tab for a token", values: []string{"Bearer\t"}, want: outcomeInvalid},
		{name: "empty header", values: []string{""}, want: outcomeMissing},
		{name: "blank header", values: []string{" \t "}, want: outcomeMissing},
		{name: "two headers", values: []string{"Bearer a", "Bearer b"}, want: outcomeMultipleAuth},
		{name: "two headers, one empty", values: []string{"Bearer a", ""}, want: outcomeMultipleAuth},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := http.Header{}
			if tt.values != nil {
				h["Authorization"] = tt.values
			}
			token, got := bearerToken(h)
			if got != tt.want || token != tt.wantToken {
				t.Errorf("bearerToken(%q) = %q, %d; want %q, %d", tt.values, token, got, tt.wantToken, tt.want)
			}
		})
	}
}

func TestCredentialsInQuery(t *testing.T) {
	tests := []struct {
		query string
		want  bool
	}{
		{"", false},
		{"page=2&limit=10", false},
		{"api_key=ps_live_x", true},
		{"a=1&access_token=x", true},
		{"key=x", true},
		{"KEY=x", true},
		{"Api_Key=x", true},
		{"API_KEY=x", true},
		{"api%5Fkey=x", true},
		{"api%5fkey=x", true},
		{"%61%70%69%5F%6B%65%79=x", true},
		{"api%255Fkey=x", true}, // encoded twice
		{"key", true},
		{"key=", true},
		{"keys=1&monkey=2&key_id=3", false},
		{"a=key&b=api_key", false},
		{"key_id=1&keyword=x&hotkey=y&api_keys=z&my_api_key=w", false},
		// ';' separates too: some backends split on it.
		{"x=1;key=2", true},
		{"a=1;api_key=x", true},
		{"a=1&amp;api_key=x", true},
		{"a=1;;access_token=x", true},
		// Array syntax.
		{"access_token[]=x", true},
		{"api_key[0]=x", true},
		{"api_key[x]=y", true},
		{"api_key%5B%5D=x", true},
		{"key[]=x", true},
		{"api[key=x", true}, // PHP: api_key
		{"key_id[]=x", false},
		{"user[key]=x", false},
		// What PHP and friends read as api_key.
		{"api.key=x", true},
		{"api+key=x", true},
		{"api%20key=x", true},
		{"+api_key=x", true},
		{"%20api_key=x", true},
		{"api_key%00=x", true},
		// Other names of the kind.
		{"apikey=x", true},
		{"apiKey=x", true},
		{"api-key=x", true},
		{"access-token=x", true},
		{"accessToken=x", true},
		{"api_token=x", true},
		{"auth_token=x", true},
		{"token=abc", false}, // too common a name (unsubscribe links, paging)
		// A key under any name, or none.
		{"t=ps_live_abc", true},
		{"ps_test_abc", true},
		{"q=x&next=ps_live_0123", true},
		{"t=ps%5Flive%5Fabc", true},
		{"t=%70%73%5F%74%65%73%74%5Fabc", true},
		{"q=ps_lives", false},
		{"q=ps_", false},
		// Broken escapes change nothing.
		{"a=%zz&b=%", false},
		{"api_key%zz=x", false},
		{"api%5Fkey[%]=x", true},
	}
	for _, tt := range tests {
		if got := credentialsInQuery(tt.query); got != tt.want {
			t.Errorf("credentialsInQuery(%q) = %v, want %v", tt.query, got, tt.want)
		}
	}
}

func TestCredentialsInQueryDoesNotAllocate(t *testing.T) {
	for _, q := range []string{"page=2&limit=10&to=someone%40example.com", "api%5Fkey=x", "a=1;b=%70%73"} {
		if n := testing.AllocsPerRun(100, func() { credentialsInQuery(q) }); n != 0 {
			t.Errorf("credentialsInQuery(%q) allocates %v times", q, n)
		}
	}
}

func TestDropClientHeaders(t *testing.T) {
	h := http.Header{
		"Postscale-Mode":       {"live"},
		"Postscale-Account-Id": {"victim"},
		"Postscale-Key-Id":     {"key_x"},
		"Postscale-Plan":       {"enterprise"},
		"Postscale_mode":       {"live"},
		"Postscale.Plan":       {"scale"},
		"postscale-custom":     {"x"},
		"Postscaler":           {"keep"},
		"Content-Type":         {"application/json"},
	}
	dropClientHeaders(h)
	want := http.Header{"Postscaler": {"keep"}, "Content-Type": {"application/json"}}
	if len(h) != len(want) {
		t.Fatalf("after dropClientHeaders: got %v, want %v", h, want)
	}
	for k := range want {
		if h.Get(k) != want.Get(k) {
			t.Errorf("header %s: got %q, want %q", k, h.Get(k), want.Get(k))
		}
	}
}

// FuzzBearerToken checks that the header parser never panics and that a
// token it returns is non-empty and free of blanks.
func FuzzBearerToken(f *testing.F) {
	for _, s := range []string{"Bearer ps_live_x", "bearer", "Basic abc", "", " Bearer  x ", "Bearer\tx"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		token, o := bearerToken(http.Header{"Authorization": {v}})
		if o == outcomeAdmitted {
			if token == "" || strings.ContainsAny(token, " \t") {
				t.Fatalf("bearerToken(%q) returned token %q", v, token)
			}
		} else if token != "" {
			t.Fatalf("bearerToken(%q) rejected but returned token %q", v, token)
		}
		_ = credentialsInQuery(v)
	})
}

// TestDropClientTrailers reads a chunked HTTP/1.1 request the way
// net/http's server does, with Postscale trailers in every spelling,
// declared and not: none is left in r.Trailer once the body is read, and
// the other trailers are.
func TestDropClientTrailers(t *testing.T) {
	raw := "POST /v1/emails HTTP/1.1\r\n" +
		"Host: gateway\r\n" +
		"Transfer-Encoding: chunked\r\n" +
		"Trailer: Postscale-Account-Id, X-Checksum\r\n" +
		"Trailer: postscale_plan, Postscale.Mode\r\n" +
		"\r\n" +
		"5\r\nhello\r\n0\r\n" +
		"Postscale-Account-Id: victim\r\n" +
		"Postscale_Plan: enterprise\r\n" +
		"Postscale.Mode: live\r\n" +
		"POSTSCALE-KEY-ID: key_forged\r\n" + // not declared
		"X-Checksum: abc\r\n" +
		"\r\n"
	r, err := http.ReadRequest(bufio.NewReader(strings.NewReader(raw)))
	if err != nil {
		t.Fatal(err)
	}
	dropClientTrailers(r)
	for name := range r.Trailer {
		if isPostscaleName(name) {
			t.Errorf("before the body is read: r.Trailer declares %s", name)
		}
	}
	body, err := io.ReadAll(r.Body)
	if err != nil || string(body) != "hello" {
		t.Fatalf("body: %q, %v", body, err)
	}
	for name, v := range r.Trailer {
		if isPostscaleName(name) {
			t.Errorf("after the body: trailer %s: %q reached the next handler", name, v)
		}
	}
	if got := r.Trailer.Get("X-Checksum"); got != "abc" {
		t.Errorf("X-Checksum trailer: got %q, want abc (other trailers must pass)", got)
	}
}

func TestDropClientTrailerDeclaration(t *testing.T) {
	tests := []struct {
		in   []string
		want []string // nil: no Trailer header left
	}{
		{[]string{"X-Checksum"}, []string{"X-Checksum"}},
		{[]string{"Postscale-Account-Id"}, nil},
		{[]string{"Postscale-Account-Id, X-Checksum", "postscale_mode"}, []string{"X-Checksum"}},
		{[]string{" POSTSCALE.PLAN ,\tX-A , X-B"}, []string{"X-A, X-B"}},
		{[]string{"Postscaler"}, []string{"Postscaler"}},
	}
	for _, tt := range tests {
		r := &http.Request{Header: http.Header{"Trailer": slices.Clone(tt.in)}}
		dropClientTrailers(r)
		if got := r.Header["Trailer"]; !slices.Equal(got, tt.want) {
			t.Errorf("Trailer %q: got %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestIsPostscaleName(t *testing.T) {
	for name, want := range map[string]bool{
		"Postscale-Mode": true, "postscale-x": true, "POSTSCALE_MODE": true, "Postscale.Plan": true,
		"Postscale-": false, "Postscale": false, "Postscaler": false, "X-Postscale-Mode": false, "": false,
	} {
		if got := isPostscaleName(name); got != want {
			t.Errorf("isPostscaleName(%q) = %v, want %v", name, got, want)
		}
	}
}
