package postscale

import (
	"net/http"
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
		{name: "basic scheme", values: []string{"Basic dXNlcjpwYXNz"}, want: outcomeMissing},
		{name: "token scheme", values: []string{"Token ps_live_x"}, want: outcomeMissing},
		{name: "bare key without scheme", values: []string{"ps_live_abc"}, want: outcomeMissing},
		{name: "bearer", values: []string{"Bearer ps_live_abc"}, wantToken: "ps_live_abc", want: outcomeAdmitted},
		{name: "lowercase scheme", values: []string{"bearer ps_live_abc"}, wantToken: "ps_live_abc", want: outcomeAdmitted},
		{name: "uppercase scheme", values: []string{"BEARER ps_live_abc"}, wantToken: "ps_live_abc", want: outcomeAdmitted},
		{name: "extra spaces", values: []string{"  Bearer   ps_live_abc  "}, wantToken: "ps_live_abc", want: outcomeAdmitted},
		{name: "bearer without token", values: []string{"Bearer"}, want: outcomeInvalid},
		{name: "bearer with blank token", values: []string{"Bearer    "}, want: outcomeInvalid},
		{name: "empty header", values: []string{""}, want: outcomeMissing},
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
		{"api%5Fkey=x", true},
		{"key", true},
		{"keys=1&monkey=2&key_id=3", false},
		{"a=key&b=api_key", false},
		{"x=1;key=2", false}, // ';' is not a separator for Go's servers
	}
	for _, tt := range tests {
		if got := credentialsInQuery(tt.query); got != tt.want {
			t.Errorf("credentialsInQuery(%q) = %v, want %v", tt.query, got, tt.want)
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
// token it returns is non-empty and free of surrounding blanks.
func FuzzBearerToken(f *testing.F) {
	for _, s := range []string{"Bearer ps_live_x", "bearer", "Basic abc", "", " Bearer  x ", "Bearer\tx"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		token, o := bearerToken(http.Header{"Authorization": {v}})
		if o == outcomeAdmitted {
			if token == "" || token[0] == ' ' || token[len(token)-1] == ' ' {
				t.Fatalf("bearerToken(%q) returned token %q", v, token)
			}
		} else if token != "" {
			t.Fatalf("bearerToken(%q) rejected but returned token %q", v, token)
		}
		_ = credentialsInQuery(v)
	})
}
