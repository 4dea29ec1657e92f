package postscale

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
)

// TestRejectionBodies: every error body the gateway writes, scope 403s
// included, is one JSON document that reads as written (no \u003c for <)
// and ends with a newline, so that curl in a terminal ends its line.
func TestRejectionBodies(t *testing.T) {
	sr := ScopeRule{Scope: "emails:send"}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	if err := sr.provision(ctx); err != nil {
		t.Fatal(err)
	}
	bodies := map[string][]byte{"scope rule": sr.rejection.body}
	for o := outcome(0); o < numOutcomes; o++ {
		if o == outcomeAdmitted || o == outcomeForbidden {
			continue // no response, or built per scope rule (above)
		}
		bodies[fmt.Sprintf("outcome %d (%s)", o, outcomeLabels[o])] = rejections[o].body
	}
	for name, body := range bodies {
		if !bytes.HasSuffix(body, []byte("}\n")) {
			t.Errorf("%s: body %q does not end with a newline", name, body)
		}
		if bytes.Contains(body, []byte(`\u00`)) {
			t.Errorf("%s: body %q escapes characters a person should read as they are", name, body)
		}
		var doc map[string]map[string]string
		if err := json.Unmarshal(body, &doc); err != nil || doc["error"]["message"] == "" {
			t.Errorf("%s: body %q is not the JSON error document: %v", name, body, err)
		}
	}
	if body := string(rejections[outcomeMultipleAuth].body); !strings.Contains(body, "'Authorization: Bearer <key>'") {
		t.Errorf("more than one Authorization header: body %s, want it to show 'Authorization: Bearer <key>'", body)
	}
}

// TestWrongSchemeMessage: a key sent without the word Bearer gets the
// contract's 401 missing_api_key, with a message that says the scheme is
// wrong and shows the right form, not "No API key provided".
func TestWrongSchemeMessage(t *testing.T) {
	for _, v := range []string{"ps_live_abc123xyz", "Basic dXNlcjpwYXNz", "Bearerps_live_abc"} {
		_, o := bearerToken(http.Header{"Authorization": {v}})
		w := httptest.NewRecorder()
		writeRejection(w, o)
		var doc struct {
			Error struct{ Type, Code, Message string }
		}
		if err := json.Unmarshal(w.Body.Bytes(), &doc); err != nil {
			t.Fatal(err)
		}
		if w.Code != http.StatusUnauthorized || w.Header().Get("WWW-Authenticate") != challenge ||
			doc.Error.Type != "authentication_error" || doc.Error.Code != "missing_api_key" {
			t.Errorf("%q: got %d %q %s/%s; want 401 %q authentication_error/missing_api_key",
				v, w.Code, w.Header().Get("WWW-Authenticate"), doc.Error.Type, doc.Error.Code, challenge)
		}
		if !strings.Contains(doc.Error.Message, "does not use the Bearer scheme") ||
			!strings.Contains(doc.Error.Message, "'Authorization: Bearer ps_live_…'") || strings.Contains(doc.Error.Message, "No API key provided") {
			t.Errorf("%q: message %q; want it to say the scheme is wrong and show 'Authorization: Bearer ps_live_…'", v, doc.Error.Message)
		}
		if outcomeLabels[o] != "missing" {
			t.Errorf("%q: metrics label %q, want missing", v, outcomeLabels[o])
		}
	}
	// No header, or an empty one, is still "no API key provided".
	for _, h := range []http.Header{{}, {"Authorization": {" "}}} {
		if _, o := bearerToken(h); !strings.Contains(string(rejections[o].body), "No API key provided") {
			t.Errorf("%v: body %s, want No API key provided", h, rejections[o].body)
		}
	}
}
