package test

import (
	"net/url"
	"strings"
	"testing"
)

// TestOddBearerSpacing: RFC 6750 allows only spaces between "Bearer" and
// the key. A Bearer credential written with a tab is malformed: 401
// invalid_api_key with error="invalid_token" (it was missing_api_key,
// which told the client no key had been seen). Blanks around the whole
// value are not part of it, and several spaces are allowed.
func TestOddBearerSpacing(t *testing.T) {
	backend, _ := startGateway(t, "")
	createAccount(t, "acme", "growth")
	k := createKey(t, "acme", "server", "live")

	for _, v := range []string{"Bearer\t" + k.Key, "Bearer \t" + k.Key, "Bearer\t " + k.Key, "bearer\t\t" + k.Key, "Bearer," + k.Key, "Bearer " + k.Key + " " + k.Key} {
		t.Run(strings.ReplaceAll(v[:min(len(v), 10)], "\t", `\t`), func(t *testing.T) {
			expectRejected(t, backend, invalidKey, "/v1/emails", "Authorization: "+v)
		})
	}
	for _, v := range []string{"Bearer   " + k.Key, "\tBearer " + k.Key + "\t", "BEARER " + k.Key + "  "} {
		expectPassed(t, backend, "/v1/emails", "Authorization: "+v)
	}
}

// TestKeysInQueryEveryForm: a key in the query is refused in every form a
// backend may read it in, before any key check, and nothing reaches the
// backend; harmless look-alike names pass.
func TestKeysInQueryEveryForm(t *testing.T) {
	backend, _ := startGateway(t, "")
	createAccount(t, "acme", "growth")
	k := createKey(t, "acme", "server", "live")
	enc := url.QueryEscape(k.Key)

	for _, q := range []string{
		"a=1;api_key=" + enc,
		"access_token[]=" + enc,
		"api_key[0]=" + enc,
		"api%5Fkey=" + enc,
		"API_KEY=" + enc,
		"api.key=" + enc,
		"api-key=" + enc,
		"apiKey=" + enc,
		"key%5B%5D=" + enc,
		"to=a%40example.com&amp;key=" + enc,
		"token=" + enc,
		"t=ps%5Flive%5F" + enc[len("ps_live_"):],
		enc,
	} {
		t.Run(q[:min(len(q), 24)], func(t *testing.T) {
			expectRejected(t, backend, credentialsInURL, "/v1/emails?"+q, bearer(k.Key))
		})
	}
	for _, q := range []string{"key_id=key_123", "monkey=1&keys=2", "keyword=x&token=abc", "to=a%40example.com;page=2"} {
		expectAdmitted(t, backend, k.Key, "/v1/emails?"+q)
	}
}
