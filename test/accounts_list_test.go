package test

import (
	"net/http"
	"slices"
	"strings"
	"testing"
)

// TestAccountsListAPI: GET /postscale/accounts pages through the accounts
// in id order, finds them by prefix, and refuses a limit out of bounds.
func TestAccountsListAPI(t *testing.T) {
	startGateway(t, "")
	for _, id := range []string{"globex", "acme", "acme-eu", "initech", "Umbrella"} {
		createAccount(t, id, "growth")
	}
	type page struct {
		Accounts []struct {
			ID   string `json:"id"`
			Plan string `json:"plan"`
		} `json:"accounts"`
		Next *string `json:"next"`
	}
	ids := func(p page) []string {
		var out []string
		for _, a := range p.Accounts {
			out = append(out, a.ID)
		}
		return out
	}
	var p page
	adminCall(t, http.MethodGet, "/postscale/accounts?limit=2", nil, http.StatusOK, &p)
	if !slices.Equal(ids(p), []string{"Umbrella", "acme"}) || p.Next == nil || *p.Next != "acme" {
		t.Fatalf("first page of 2: %v next %v, want [Umbrella acme] next acme", ids(p), p.Next)
	}
	adminCall(t, http.MethodGet, "/postscale/accounts?limit=2&after=acme", nil, http.StatusOK, &p)
	if !slices.Equal(ids(p), []string{"acme-eu", "globex"}) || *p.Next != "globex" {
		t.Fatalf("second page: %v next %v", ids(p), *p.Next)
	}
	p = page{}
	adminCall(t, http.MethodGet, "/postscale/accounts?limit=2&after=globex", nil, http.StatusOK, &p)
	if !slices.Equal(ids(p), []string{"initech"}) || p.Next == nil || *p.Next != "" {
		t.Fatalf("last page: %v next %v, want [initech] and next \"\"", ids(p), p.Next)
	}
	adminCall(t, http.MethodGet, "/postscale/accounts", nil, http.StatusOK, &p)
	if len(p.Accounts) != 5 || p.Accounts[1].Plan != "growth" {
		t.Errorf("default page: %+v", p)
	}
	adminCall(t, http.MethodGet, "/postscale/accounts?q=acme", nil, http.StatusOK, &p)
	if !slices.Equal(ids(p), []string{"acme", "acme-eu"}) {
		t.Errorf("q=acme: %v", ids(p))
	}
	for _, bad := range []string{"limit=0", "limit=501", "limit=x", "after=a%20b"} {
		msg := adminError(t, http.MethodGet, "/postscale/accounts?"+bad, nil, http.StatusBadRequest)
		if !strings.HasPrefix(msg, "limit:") && !strings.HasPrefix(msg, "after:") {
			t.Errorf("?%s: %q, want it to name the parameter", bad, msg)
		}
	}
	adminError(t, http.MethodDelete, "/postscale/accounts", nil, http.StatusMethodNotAllowed)
}
