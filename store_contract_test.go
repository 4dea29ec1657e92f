package postscale

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"
)

// testStoreContract is the behaviour every Store implementation must have,
// as documented on the Store interface. Each implementation's tests call it
// with a function that opens a fresh, empty store for one subtest (and
// closes it in t.Cleanup). A store whose Watch polls should be opened with
// a short poll interval: Watch changes must be reported within 2 seconds.
func testStoreContract(t *testing.T, open func(t *testing.T) Store) {
	t.Run("Identity", func(t *testing.T) {
		s := open(t)
		if got := s.Identity(); got == "" {
			t.Errorf("Identity() = %q, want a non-empty name of the data", got)
		} else if again := s.Identity(); again != got {
			t.Errorf("Identity() = %q, then %q; want the same each time", got, again)
		}
	})

	t.Run("Account", func(t *testing.T) {
		t.Run("RoundTrip", func(t *testing.T) {
			s := open(t)
			ctx := t.Context()
			for _, want := range []Account{
				{ID: "acme", Plan: "growth", CreatedAt: contractT0},
				{ID: "big-corp_1", Plan: "enterprise", Rate: 12.5, Burst: 40, CreatedAt: contractT0.Add(time.Hour + 7*time.Microsecond)},
				{ID: "quota", Plan: "growth", Quota: &Quota{Count: 50000, Period: PeriodMonth}, QuotaAnchor: ptr(contractT0.Add(-40 * 24 * time.Hour)), CreatedAt: contractT0},
			} {
				if err := s.CreateAccount(ctx, want); err != nil {
					t.Fatalf("CreateAccount(%q): %v", want.ID, err)
				}
				got, err := s.GetAccount(ctx, want.ID)
				if err != nil {
					t.Fatalf("GetAccount(%q): %v", want.ID, err)
				}
				contractCheckAccount(t, "GetAccount("+want.ID+")", got, want)
			}
		})

		t.Run("Duplicate", func(t *testing.T) {
			s := open(t)
			ctx := t.Context()
			first := contractCreateAccount(t, s, "acme")
			err := s.CreateAccount(ctx, Account{ID: "acme", Plan: "scale", CreatedAt: contractT0.Add(time.Hour)})
			if !errors.Is(err, ErrExists) {
				t.Errorf("CreateAccount(duplicate id) error = %v, want ErrExists", err)
			}
			got, err := s.GetAccount(ctx, "acme")
			if err != nil {
				t.Fatalf("GetAccount(acme) after duplicate create: %v", err)
			}
			contractCheckAccount(t, "GetAccount(acme) after duplicate create", got, first)
		})

		t.Run("GetUnknown", func(t *testing.T) {
			s := open(t)
			contractCreateAccount(t, s, "acme")
			_, err := s.GetAccount(t.Context(), "nobody")
			if !errors.Is(err, ErrNotFound) {
				t.Errorf("GetAccount(unknown) error = %v, want ErrNotFound", err)
			}
		})
	})

	t.Run("Key", func(t *testing.T) {
		t.Run("CreateForUnknownAccount", func(t *testing.T) {
			s := open(t)
			ctx := t.Context()
			contractCreateAccount(t, s, "acme")
			k := contractNewKey(t, "nobody", ModeLive, contractT0)
			err := s.CreateKey(ctx, k)
			if !errors.Is(err, ErrNotFound) {
				t.Errorf("CreateKey(unknown account) error = %v, want ErrNotFound", err)
			}
			if _, err := s.GetKey(ctx, k.ID); !errors.Is(err, ErrNotFound) {
				t.Errorf("GetKey after a failed CreateKey: error = %v, want ErrNotFound", err)
			}
			if _, _, err := s.LookupKey(ctx, k.Hash); !errors.Is(err, ErrNotFound) {
				t.Errorf("LookupKey after a failed CreateKey: error = %v, want ErrNotFound", err)
			}
		})

		t.Run("DuplicateID", func(t *testing.T) {
			s := open(t)
			ctx := t.Context()
			contractCreateAccount(t, s, "acme")
			first := contractCreateKey(t, s, "acme", contractT0)
			dup := contractNewKey(t, "acme", ModeTest, contractT0.Add(time.Minute))
			dup.ID = first.ID
			if err := s.CreateKey(ctx, dup); !errors.Is(err, ErrExists) {
				t.Errorf("CreateKey(duplicate id) error = %v, want ErrExists", err)
			}
			got, err := s.GetKey(ctx, first.ID)
			if err != nil {
				t.Fatalf("GetKey after duplicate create: %v", err)
			}
			contractCheckKey(t, "GetKey after duplicate create", got, first)
			if _, _, err := s.LookupKey(ctx, dup.Hash); !errors.Is(err, ErrNotFound) {
				t.Errorf("LookupKey(hash of the rejected duplicate) error = %v, want ErrNotFound", err)
			}
		})

		t.Run("DuplicateHash", func(t *testing.T) {
			s := open(t)
			ctx := t.Context()
			contractCreateAccount(t, s, "acme")
			first := contractCreateKey(t, s, "acme", contractT0)
			dup := contractNewKey(t, "acme", ModeLive, contractT0.Add(time.Minute))
			dup.Hash = first.Hash
			if err := s.CreateKey(ctx, dup); !errors.Is(err, ErrExists) {
				t.Errorf("CreateKey(duplicate hash) error = %v, want ErrExists", err)
			}
			if _, err := s.GetKey(ctx, dup.ID); !errors.Is(err, ErrNotFound) {
				t.Errorf("GetKey(id of the rejected duplicate) error = %v, want ErrNotFound", err)
			}
			got, _, err := s.LookupKey(ctx, first.Hash)
			if err != nil {
				t.Fatalf("LookupKey after duplicate create: %v", err)
			}
			contractCheckKey(t, "LookupKey after duplicate create", got, first)
		})

		t.Run("RoundTrip", func(t *testing.T) {
			s := open(t)
			ctx := t.Context()
			contractCreateAccount(t, s, "acme")
			// Expiry given in another zone: the store keeps the instant.
			expires := time.Date(2031, 12, 31, 23, 59, 58, 999999000, time.FixedZone("UTC+2", 2*60*60))

			minimal := contractNewKey(t, "acme", ModeLive, contractT0)

			full := contractNewKey(t, "acme", ModeTest, contractT0.Add(90*time.Minute+1*time.Microsecond))
			full.Name = "production server — Zürich \"eu-1\""
			full.Scopes = []string{"emails:send", "emails:read", "domains:*"}
			full.Legacy = true
			full.ExpiresAt = &expires

			oneScope := contractNewKey(t, "acme", ModeLive, contractT0.Add(3*time.Hour))
			oneScope.Scopes = []string{"emails:send"}

			for _, tc := range []struct {
				name string
				k    KeyRecord
			}{
				{"Minimal", minimal},
				{"Full", full},
				{"OneScope", oneScope},
			} {
				t.Run(tc.name, func(t *testing.T) {
					if err := s.CreateKey(ctx, tc.k); err != nil {
						t.Fatalf("CreateKey: %v", err)
					}
					got, err := s.GetKey(ctx, tc.k.ID)
					if err != nil {
						t.Fatalf("GetKey: %v", err)
					}
					contractCheckKey(t, "GetKey", got, tc.k)
				})
			}
		})

		t.Run("GetUnknown", func(t *testing.T) {
			s := open(t)
			contractCreateAccount(t, s, "acme")
			contractCreateKey(t, s, "acme", contractT0)
			if _, err := s.GetKey(t.Context(), "key_doesnotexist"); !errors.Is(err, ErrNotFound) {
				t.Errorf("GetKey(unknown) error = %v, want ErrNotFound", err)
			}
		})
	})

	t.Run("LookupKey", func(t *testing.T) {
		t.Run("ReturnsKeyAndAccount", func(t *testing.T) {
			s := open(t)
			ctx := t.Context()
			acct := Account{ID: "big-corp", Plan: "enterprise", Rate: 33.25, Burst: 70, CreatedAt: contractT0}
			if err := s.CreateAccount(ctx, acct); err != nil {
				t.Fatalf("CreateAccount: %v", err)
			}
			other := contractCreateAccount(t, s, "acme")
			k := contractNewKey(t, acct.ID, ModeTest, contractT0.Add(time.Second))
			k.Scopes = []string{"emails:send", "emails:read"}
			if err := s.CreateKey(ctx, k); err != nil {
				t.Fatalf("CreateKey: %v", err)
			}
			ok := contractCreateKey(t, s, other.ID, contractT0.Add(2*time.Second))

			gotKey, gotAcct, err := s.LookupKey(ctx, k.Hash)
			if err != nil {
				t.Fatalf("LookupKey: %v", err)
			}
			contractCheckKey(t, "LookupKey key", gotKey, k)
			contractCheckAccount(t, "LookupKey account", gotAcct, acct)

			gotKey, gotAcct, err = s.LookupKey(ctx, ok.Hash)
			if err != nil {
				t.Fatalf("LookupKey(second key): %v", err)
			}
			contractCheckKey(t, "LookupKey(second key) key", gotKey, ok)
			contractCheckAccount(t, "LookupKey(second key) account", gotAcct, other)
		})

		t.Run("Unknown", func(t *testing.T) {
			s := open(t)
			contractCreateAccount(t, s, "acme")
			contractCreateKey(t, s, "acme", contractT0)
			_, _, err := s.LookupKey(t.Context(), HashKey("ps_live_not-a-stored-key"))
			if !errors.Is(err, ErrNotFound) {
				t.Errorf("LookupKey(unknown hash) error = %v, want ErrNotFound", err)
			}
		})
	})

	t.Run("ListKeys", func(t *testing.T) {
		t.Run("OldestFirstOwnKeysOnly", func(t *testing.T) {
			s := open(t)
			ctx := t.Context()
			contractCreateAccount(t, s, "acme")
			contractCreateAccount(t, s, "other")
			// Created out of order, interleaved with another account's keys.
			k2 := contractCreateKey(t, s, "acme", contractT0.Add(2*time.Hour))
			contractCreateKey(t, s, "other", contractT0.Add(30*time.Minute))
			k0 := contractCreateKey(t, s, "acme", contractT0)
			contractCreateKey(t, s, "other", contractT0.Add(-time.Hour))
			k1 := contractCreateKey(t, s, "acme", contractT0.Add(time.Microsecond))

			got, err := s.ListKeys(ctx, "acme")
			if err != nil {
				t.Fatalf("ListKeys: %v", err)
			}
			want := []KeyRecord{k0, k1, k2}
			if len(got) != len(want) {
				t.Fatalf("ListKeys returned %d keys %v, want %d %v", len(got), contractKeyIDs(got), len(want), contractKeyIDs(want))
			}
			for i := range want {
				contractCheckKey(t, fmt.Sprintf("ListKeys[%d]", i), got[i], want[i])
			}
		})

		t.Run("AccountWithoutKeys", func(t *testing.T) {
			s := open(t)
			contractCreateAccount(t, s, "acme")
			contractCreateAccount(t, s, "other")
			contractCreateKey(t, s, "other", contractT0)
			got, err := s.ListKeys(t.Context(), "acme")
			if err != nil {
				t.Fatalf("ListKeys: %v", err)
			}
			if got == nil || len(got) != 0 {
				t.Errorf("ListKeys(account without keys) = %#v, want an empty non-nil list", got)
			}
		})

		t.Run("UnknownAccount", func(t *testing.T) {
			s := open(t)
			contractCreateAccount(t, s, "acme")
			if _, err := s.ListKeys(t.Context(), "nobody"); !errors.Is(err, ErrNotFound) {
				t.Errorf("ListKeys(unknown account) error = %v, want ErrNotFound", err)
			}
		})
	})

	t.Run("ListAccounts", func(t *testing.T) {
		t.Run("PagesInByteOrder", func(t *testing.T) {
			s := open(t)
			ctx := t.Context()
			// Created out of byte order; upper case, digits, _ and - sort
			// differently in byte order than in most languages' collations.
			ids := []string{"beta", "Zed", "alpha", "a-1", "a_1", "b", "9lives", "alpha2"}
			want := map[string]Account{}
			for _, id := range ids {
				want[id] = contractCreateAccount(t, s, id)
			}
			sorted := slices.Clone(ids)
			slices.Sort(sorted)
			var got []string
			after := ""
			for page := 0; ; page++ {
				if page > len(ids) {
					t.Fatalf("ListAccounts never ran out: pages so far %v", got)
				}
				accounts, err := s.ListAccounts(ctx, after, 3)
				if err != nil {
					t.Fatalf("ListAccounts(%q, 3): %v", after, err)
				}
				if len(accounts) > 3 {
					t.Fatalf("ListAccounts(%q, 3) returned %d accounts", after, len(accounts))
				}
				if len(accounts) == 0 {
					break
				}
				for _, a := range accounts {
					contractCheckAccount(t, "ListAccounts("+a.ID+")", a, want[a.ID])
					got = append(got, a.ID)
				}
				after = accounts[len(accounts)-1].ID
			}
			if !slices.Equal(got, sorted) {
				t.Errorf("pages of ListAccounts = %v, want %v (byte order)", got, sorted)
			}
		})

		t.Run("Empty", func(t *testing.T) {
			s := open(t)
			got, err := s.ListAccounts(t.Context(), "", 50)
			if err != nil {
				t.Fatalf("ListAccounts on an empty store: %v", err)
			}
			if got == nil || len(got) != 0 {
				t.Errorf("ListAccounts on an empty store = %#v, want an empty non-nil list", got)
			}
		})

		t.Run("AfterTheLast", func(t *testing.T) {
			s := open(t)
			contractCreateAccount(t, s, "acme")
			got, err := s.ListAccounts(t.Context(), "acme", 50)
			if err != nil {
				t.Fatalf("ListAccounts after the last: %v", err)
			}
			if len(got) != 0 {
				t.Errorf("ListAccounts(after the last id) = %v, want none", got)
			}
		})
	})

	t.Run("RevokeKey", func(t *testing.T) {
		t.Run("SetsRevokedAt", func(t *testing.T) {
			s := open(t)
			ctx := t.Context()
			acct := contractCreateAccount(t, s, "acme")
			k := contractCreateKey(t, s, "acme", contractT0)
			other := contractCreateKey(t, s, "acme", contractT0.Add(time.Second))
			at := contractT0.Add(24*time.Hour + 42*time.Microsecond)

			want := k
			want.RevokedAt = &at
			got, err := s.RevokeKey(ctx, k.ID, at)
			if err != nil {
				t.Fatalf("RevokeKey: %v", err)
			}
			contractCheckKey(t, "RevokeKey result", got, want)

			got, err = s.GetKey(ctx, k.ID)
			if err != nil {
				t.Fatalf("GetKey after RevokeKey: %v", err)
			}
			contractCheckKey(t, "GetKey after RevokeKey", got, want)

			got, gotAcct, err := s.LookupKey(ctx, k.Hash)
			if err != nil {
				t.Fatalf("LookupKey after RevokeKey: %v", err)
			}
			contractCheckKey(t, "LookupKey after RevokeKey", got, want)
			contractCheckAccount(t, "LookupKey after RevokeKey account", gotAcct, acct)

			// Only that key is revoked.
			got, err = s.GetKey(ctx, other.ID)
			if err != nil {
				t.Fatalf("GetKey(other key): %v", err)
			}
			contractCheckKey(t, "GetKey(other key) after revoking another", got, other)
		})

		t.Run("KeepsFirstTime", func(t *testing.T) {
			s := open(t)
			ctx := t.Context()
			contractCreateAccount(t, s, "acme")
			k := contractCreateKey(t, s, "acme", contractT0)
			first := contractT0.Add(time.Hour)
			if _, err := s.RevokeKey(ctx, k.ID, first); err != nil {
				t.Fatalf("RevokeKey: %v", err)
			}
			want := k
			want.RevokedAt = &first
			for _, again := range []time.Time{first.Add(time.Hour), first.Add(-time.Minute)} {
				got, err := s.RevokeKey(ctx, k.ID, again)
				if err != nil {
					t.Fatalf("RevokeKey again at %v: %v", again, err)
				}
				contractCheckKey(t, "RevokeKey again", got, want)
			}
			got, _, err := s.LookupKey(ctx, k.Hash)
			if err != nil {
				t.Fatalf("LookupKey after revoking twice: %v", err)
			}
			contractCheckKey(t, "LookupKey after revoking twice", got, want)
		})

		t.Run("Unknown", func(t *testing.T) {
			s := open(t)
			contractCreateAccount(t, s, "acme")
			contractCreateKey(t, s, "acme", contractT0)
			if _, err := s.RevokeKey(t.Context(), "key_doesnotexist", contractT0); !errors.Is(err, ErrNotFound) {
				t.Errorf("RevokeKey(unknown) error = %v, want ErrNotFound", err)
			}
		})
	})

	t.Run("UpdateAccount", func(t *testing.T) {
		t.Run("ChangesPlanAndLimits", func(t *testing.T) {
			s := open(t)
			a := contractCreateAccount(t, s, "acme")
			k := contractCreateKey(t, s, "acme", contractT0)
			a.Plan, a.Rate, a.Burst = "enterprise", 250, 400
			a.Quota, a.QuotaAnchor = &Quota{Count: 9, Period: PeriodDay}, ptr(contractT0.Add(3*time.Hour))
			got, err := s.UpdateAccount(t.Context(), "acme", func(Account) (Account, error) { return a, nil })
			if err != nil {
				t.Fatalf("UpdateAccount: %v", err)
			}
			contractCheckAccount(t, "UpdateAccount result", got, a)
			_, ga, err := s.LookupKey(t.Context(), k.Hash)
			if err != nil {
				t.Fatalf("LookupKey: %v", err)
			}
			contractCheckAccount(t, "account seen through LookupKey", ga, a)
		})
		t.Run("Unknown", func(t *testing.T) {
			s := open(t)
			called := false
			_, err := s.UpdateAccount(t.Context(), "ghost", func(a Account) (Account, error) { called = true; return a, nil })
			if !errors.Is(err, ErrNotFound) || called {
				t.Fatalf("UpdateAccount(ghost): got %v (update called: %v), want ErrNotFound without a call", err, called)
			}
		})
		t.Run("UpdateErrorChangesNothing", func(t *testing.T) {
			s := open(t)
			a := contractCreateAccount(t, s, "acme")
			refuse := errors.New("refused")
			_, err := s.UpdateAccount(t.Context(), "acme", func(b Account) (Account, error) {
				b.Plan = "scale"
				return b, refuse
			})
			if !errors.Is(err, refuse) {
				t.Fatalf("UpdateAccount with a failing update: got %v, want its error", err)
			}
			got, err := s.GetAccount(t.Context(), "acme")
			if err != nil {
				t.Fatal(err)
			}
			contractCheckAccount(t, "account after a refused update", got, a)
		})
		t.Run("ConcurrentUpdatesAllApply", func(t *testing.T) {
			s := open(t)
			a := contractCreateAccount(t, s, "acme")
			a.Plan, a.Rate, a.Burst = "enterprise", 10, 0
			if _, err := s.UpdateAccount(t.Context(), "acme", func(Account) (Account, error) { return a, nil }); err != nil {
				t.Fatal(err)
			}
			const workers, each = 4, 10
			var wg sync.WaitGroup
			for range workers {
				wg.Go(func() {
					for range each {
						_, err := s.UpdateAccount(t.Context(), "acme", func(b Account) (Account, error) {
							b.Burst++
							return b, nil
						})
						if err != nil {
							t.Error(err)
						}
					}
				})
			}
			wg.Wait()
			got, err := s.GetAccount(t.Context(), "acme")
			if err != nil {
				t.Fatal(err)
			}
			if got.Burst != workers*each {
				t.Errorf("after %d concurrent increments: burst %d, want %d (an update was lost)", workers*each, got.Burst, workers*each)
			}
		})
		t.Run("Watched", func(t *testing.T) {
			s := open(t)
			a := contractCreateAccount(t, s, "acme")
			w := contractStartWatch(t, s)
			w.sync(t, s, "acme")
			a.Plan = "scale"
			if _, err := s.UpdateAccount(t.Context(), "acme", func(Account) (Account, error) { return a, nil }); err != nil {
				t.Fatal(err)
			}
			deadline := time.Now().Add(contractWatchTimeout)
			for !w.seenAccount("acme") {
				if time.Now().After(deadline) {
					t.Fatalf("an account update was not reported by Watch within %v", contractWatchTimeout)
				}
				time.Sleep(5 * time.Millisecond)
			}
		})
	})

	t.Run("CreateKeys", func(t *testing.T) {
		t.Run("AllOrNone", func(t *testing.T) {
			s := open(t)
			contractCreateAccount(t, s, "acme")
			existing := contractCreateKey(t, s, "acme", contractT0)
			fresh := contractNewKey(t, "acme", ModeLive, contractT0)
			dup := contractNewKey(t, "acme", ModeLive, contractT0)
			dup.Hash = existing.Hash
			if err := s.CreateKeys(t.Context(), []KeyRecord{fresh, dup}); !errors.Is(err, ErrExists) {
				t.Fatalf("CreateKeys with a duplicate hash: got %v, want ErrExists", err)
			}
			if _, err := s.GetKey(t.Context(), fresh.ID); !errors.Is(err, ErrNotFound) {
				t.Fatalf("the good key of a failed CreateKeys was stored (GetKey: %v)", err)
			}
			if err := s.CreateKeys(t.Context(), []KeyRecord{fresh}); err != nil {
				t.Fatalf("CreateKeys: %v", err)
			}
			got, err := s.GetKey(t.Context(), fresh.ID)
			if err != nil {
				t.Fatal(err)
			}
			contractCheckKey(t, "key from CreateKeys", got, fresh)
		})
	})

	t.Run("RollKey", func(t *testing.T) {
		t.Run("MarksOldAndStoresNew", func(t *testing.T) {
			s := open(t)
			contractCreateAccount(t, s, "acme")
			old := contractCreateKey(t, s, "acme", contractT0)
			next := contractNewKey(t, "acme", ModeLive, contractT0.Add(time.Hour))
			expires := contractT0.Add(25 * time.Hour)
			got, err := s.RollKey(t.Context(), old.ID, next, expires)
			if err != nil {
				t.Fatalf("RollKey: %v", err)
			}
			if got.ExpiresAt == nil || !got.ExpiresAt.Equal(expires) || got.DeprecatedAt == nil || !got.DeprecatedAt.Equal(next.CreatedAt) {
				t.Errorf("old key after roll: expires %s deprecated %s; want %s and %s",
					contractFmtTimePtr(got.ExpiresAt), contractFmtTimePtr(got.DeprecatedAt), contractFmtTime(expires), contractFmtTime(next.CreatedAt))
			}
			stored, err := s.GetKey(t.Context(), next.ID)
			if err != nil {
				t.Fatalf("GetKey(replacement): %v", err)
			}
			contractCheckKey(t, "replacement", stored, next)
		})
		t.Run("KeepsEarlierExpiry", func(t *testing.T) {
			s := open(t)
			contractCreateAccount(t, s, "acme")
			old := contractNewKey(t, "acme", ModeLive, contractT0)
			soon := contractT0.Add(time.Hour)
			old.ExpiresAt = &soon
			if err := s.CreateKey(t.Context(), old); err != nil {
				t.Fatal(err)
			}
			got, err := s.RollKey(t.Context(), old.ID, contractNewKey(t, "acme", ModeLive, contractT0), contractT0.Add(48*time.Hour))
			if err != nil {
				t.Fatal(err)
			}
			if got.ExpiresAt == nil || !got.ExpiresAt.Equal(soon) {
				t.Errorf("expiry after roll: got %s, want the earlier %s", contractFmtTimePtr(got.ExpiresAt), contractFmtTime(soon))
			}
		})
		t.Run("Unknown", func(t *testing.T) {
			s := open(t)
			contractCreateAccount(t, s, "acme")
			next := contractNewKey(t, "acme", ModeLive, contractT0)
			if _, err := s.RollKey(t.Context(), "key_ghost", next, contractT0); !errors.Is(err, ErrNotFound) {
				t.Fatalf("RollKey(unknown): got %v, want ErrNotFound", err)
			}
			if _, err := s.GetKey(t.Context(), next.ID); !errors.Is(err, ErrNotFound) {
				t.Errorf("a failed roll stored its replacement")
			}
		})
	})

	t.Run("RecordUsage", func(t *testing.T) {
		s := open(t)
		contractCreateAccount(t, s, "acme")
		k := contractCreateKey(t, s, "acme", contractT0)
		later, earlier := contractT0.Add(2*time.Hour), contractT0.Add(time.Hour)
		for _, batch := range [][]Usage{
			{{KeyID: k.ID, Requests: 5, LastUsed: later}},
			{{KeyID: k.ID, Requests: 2, LastUsed: earlier}, {KeyID: "key_ghost", Requests: 1, LastUsed: later}},
		} {
			if err := s.RecordUsage(t.Context(), batch); err != nil {
				t.Fatalf("RecordUsage: %v", err)
			}
		}
		got, err := s.GetKey(t.Context(), k.ID)
		if err != nil {
			t.Fatal(err)
		}
		if got.Requests != 7 || got.LastUsedAt == nil || !got.LastUsedAt.Equal(later) {
			t.Errorf("after usage batches: %d requests, last used %s; want 7 and %s (never moved back)",
				got.Requests, contractFmtTimePtr(got.LastUsedAt), contractFmtTime(later))
		}
	})

	t.Run("AccountUsage", func(t *testing.T) {
		s := open(t)
		ctx := t.Context()
		contractCreateAccount(t, s, "acme")
		contractCreateAccount(t, s, "globex")
		key := contractCreateKey(t, s, "acme", contractT0)
		may, june := contractT0.Add(-30*24*time.Hour), contractT0

		// A key of an account without counts: no Used.
		if _, a, err := s.LookupKey(ctx, key.Hash); err != nil || a.Used != nil {
			t.Fatalf("LookupKey before any counts: Used %+v, err %v; want nil", a.Used, err)
		}
		totals, err := s.RecordAccountUsage(ctx, []PeriodUsage{
			{Account: "acme", Period: PeriodMonth, Start: may, Live: 7, Test: 1},
			{Account: "globex", Period: PeriodMonth, Start: june, Live: 2},
		}, nil, time.Time{})
		if err != nil {
			t.Fatalf("RecordAccountUsage: %v", err)
		}
		if len(totals) != 2 || totals[0].Live != 7 || totals[0].Test != 1 || totals[0].Period != PeriodMonth || totals[1].Live != 2 {
			t.Fatalf("RecordAccountUsage totals: %+v", totals)
		}
		// Adds, returning the totals in the order given.
		totals, err = s.RecordAccountUsage(ctx, []PeriodUsage{
			{Account: "globex", Period: PeriodMonth, Start: june, Live: 3, Test: 4},
			{Account: "acme", Period: PeriodMonth, Start: june, Live: 5},
			{Account: "acme", Period: PeriodMonth, Start: may, Live: 1},
			// A day that starts with the month is a period of its own.
			{Account: "acme", Period: PeriodDay, Start: june, Live: 2},
		}, []HourUsage{
			{Account: "acme", Hour: june.Add(-50 * time.Hour), Admitted: 9},
			{Account: "acme", Hour: june.Add(-time.Hour), Admitted: 3, Refused: 1},
			{Account: "acme", Hour: june, Admitted: 2},
		}, june.Add(-48*time.Hour))
		if err != nil {
			t.Fatalf("RecordAccountUsage: %v", err)
		}
		want := []PeriodUsage{{"globex", PeriodMonth, june, 5, 4}, {"acme", PeriodMonth, june, 5, 0}, {"acme", PeriodMonth, may, 8, 1}, {"acme", PeriodDay, june, 2, 0}}
		for i, w := range want {
			if g := totals[i]; g.Account != w.Account || g.Period != w.Period || !g.Start.Equal(w.Start) || g.Live != w.Live || g.Test != w.Test {
				t.Errorf("total %d: got %+v, want %+v", i, g, w)
			}
		}
		// The most recent period comes with the key.
		if _, a, err := s.LookupKey(ctx, key.Hash); err != nil || a.Used == nil || !a.Used.Start.Equal(june) || a.Used.Live != 5 {
			t.Errorf("LookupKey: Used %+v, err %v; want the June period with 5 live", a.Used, err)
		}
		p, hours, err := s.AccountUsage(ctx, "acme", PeriodMonth, may, june.Add(-60*time.Hour))
		if err != nil {
			t.Fatalf("AccountUsage: %v", err)
		}
		if p.Live != 8 || p.Test != 1 {
			t.Errorf("AccountUsage period: %+v, want 8 live, 1 test", p)
		}
		// The hour older than 48h was dropped; the rest oldest first.
		if len(hours) != 2 || !hours[0].Hour.Equal(june.Add(-time.Hour)) || hours[0].Admitted != 3 || hours[0].Refused != 1 ||
			!hours[1].Hour.Equal(june) || hours[1].Admitted != 2 {
			t.Errorf("AccountUsage hours: %+v", hours)
		}
		if p, _, err := s.AccountUsage(ctx, "globex", PeriodMonth, may, june); err != nil || p.Live != 0 || p.Test != 0 {
			t.Errorf("AccountUsage of a period without counts: %+v, %v; want zeros", p, err)
		}
		if _, _, err := s.AccountUsage(ctx, "nobody", PeriodMonth, may, june); !errors.Is(err, ErrNotFound) {
			t.Errorf("AccountUsage(unknown account) error = %v, want ErrNotFound", err)
		}
	})

	t.Run("Keyring", func(t *testing.T) { contractKeyring(t, open) })

	t.Run("Watch", func(t *testing.T) {
		t.Run("ReportsCreatedKey", func(t *testing.T) {
			s := open(t)
			contractCreateAccount(t, s, "acme")
			w := contractStartWatch(t, s)
			w.sync(t, s, "acme")

			from := w.mark()
			k := contractNewKey(t, "acme", ModeLive, contractT0)
			if err := s.CreateKey(t.Context(), k); err != nil {
				t.Fatalf("CreateKey: %v", err)
			}
			w.waitFor(t, "CreateKey", k.Hash, from)
		})

		t.Run("ReportsRevokedKey", func(t *testing.T) {
			s := open(t)
			contractCreateAccount(t, s, "acme")
			k := contractCreateKey(t, s, "acme", contractT0)
			w := contractStartWatch(t, s)
			w.sync(t, s, "acme")

			from := w.mark()
			if _, err := s.RevokeKey(t.Context(), k.ID, contractT0.Add(time.Hour)); err != nil {
				t.Fatalf("RevokeKey: %v", err)
			}
			w.waitFor(t, "RevokeKey", k.Hash, from)
		})

		t.Run("StartsWithAll", func(t *testing.T) {
			s := open(t)
			contractCreateAccount(t, s, "acme")
			w := contractStartWatch(t, s)
			w.sync(t, s, "acme")
			w.mu.Lock()
			first := w.changes[0]
			w.mu.Unlock()
			if !first.All {
				t.Errorf("first change reported = %+v, want All (what was cached before Watch started may be stale)", first)
			}
		})

		t.Run("ReportsCreatedKeys", func(t *testing.T) {
			s := open(t)
			contractCreateAccount(t, s, "acme")
			w := contractStartWatch(t, s)
			w.sync(t, s, "acme")

			from := w.mark()
			keys := []KeyRecord{
				contractNewKey(t, "acme", ModeLive, contractT0),
				contractNewKey(t, "acme", ModeTest, contractT0),
				contractNewKey(t, "acme", ModeLive, contractT0.Add(time.Second)),
			}
			if err := s.CreateKeys(t.Context(), keys); err != nil {
				t.Fatalf("CreateKeys: %v", err)
			}
			for i, k := range keys {
				w.waitFor(t, fmt.Sprintf("CreateKeys (key %d of %d)", i+1, len(keys)), k.Hash, from)
			}
		})

		t.Run("ReportsRolledKey", func(t *testing.T) {
			s := open(t)
			contractCreateAccount(t, s, "acme")
			old := contractCreateKey(t, s, "acme", contractT0)
			w := contractStartWatch(t, s)
			w.sync(t, s, "acme")

			from := w.mark()
			next := contractNewKey(t, "acme", ModeLive, contractT0.Add(time.Hour))
			if _, err := s.RollKey(t.Context(), old.ID, next, contractT0.Add(25*time.Hour)); err != nil {
				t.Fatalf("RollKey: %v", err)
			}
			w.waitFor(t, "RollKey (the old key)", old.Hash, from)
			w.waitFor(t, "RollKey (the replacement)", next.Hash, from)
		})

		t.Run("ReportsUpdatedAccount", func(t *testing.T) {
			s := open(t)
			contractCreateAccount(t, s, "acme")
			contractCreateAccount(t, s, "other")
			w := contractStartWatch(t, s)
			w.sync(t, s, "acme")

			from := w.mark()
			if _, err := s.UpdateAccount(t.Context(), "other", func(a Account) (Account, error) {
				a.Plan, a.Rate, a.Burst = "enterprise", 100, 200
				return a, nil
			}); err != nil {
				t.Fatalf("UpdateAccount: %v", err)
			}
			start := time.Now()
			for !w.seenAccountFrom("other", from) {
				if time.Since(start) > contractWatchTimeout {
					t.Fatalf("an account update was not reported by Watch within %v", contractWatchTimeout)
				}
				time.Sleep(5 * time.Millisecond)
			}
			if w.seenAccountFrom("acme", from) {
				t.Errorf("an update of account other was reported as a change to acme")
			}
		})

		t.Run("ReturnsWhenCancelled", func(t *testing.T) {
			s := open(t)
			contractCreateAccount(t, s, "acme")
			w := contractStartWatch(t, s)
			// Not w.sync: this must hold even for a Watch that reports
			// nothing. Give it time to get going, then stop it.
			time.Sleep(100 * time.Millisecond)
			w.cancel()
			select {
			case <-w.done:
			case <-time.After(2 * time.Second):
				t.Fatal("Watch did not return within 2s of its context being cancelled")
			}
			if !errors.Is(w.err, context.Canceled) {
				t.Errorf("Watch returned %v, want context.Canceled (ctx.Err())", w.err)
			}
		})

		t.Run("ReturnsWhenCancelledBeforeStart", func(t *testing.T) {
			s := open(t)
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			done := make(chan error, 1)
			go func() { done <- s.Watch(ctx, func(Change) {}) }()
			select {
			case err := <-done:
				if !errors.Is(err, context.Canceled) {
					t.Errorf("Watch(cancelled ctx) = %v, want context.Canceled", err)
				}
			case <-time.After(2 * time.Second):
				t.Fatal("Watch(cancelled ctx) did not return within 2s")
			}
		})
	})
}

// contractHeldStore wraps a Store so that one lookup, once armed with a
// key hash, asks the real store, sends its answer on answered, and then
// waits for release before returning it: a lookup that read the record
// just before something else happened.
type contractHeldStore struct {
	Store
	answered chan KeyRecord
	release  chan struct{}

	mu    sync.Mutex
	armed *[sha256.Size]byte
}

func newContractHeldStore(s Store) *contractHeldStore {
	return &contractHeldStore{Store: s, answered: make(chan KeyRecord, 1), release: make(chan struct{})}
}

// holdNext arms the next lookup of h (only that one) to be held.
func (s *contractHeldStore) holdNext(h [sha256.Size]byte) {
	s.mu.Lock()
	s.armed = &h
	s.mu.Unlock()
}

func (s *contractHeldStore) LookupKey(ctx context.Context, h [sha256.Size]byte) (KeyRecord, Account, error) {
	k, a, err := s.Store.LookupKey(ctx, h)
	s.mu.Lock()
	hold := s.armed != nil && *s.armed == h
	if hold {
		s.armed = nil
	}
	s.mu.Unlock()
	if hold {
		s.answered <- k
		select {
		case <-s.release:
		case <-ctx.Done():
		}
	}
	return k, a, err
}

// contractKeyring checks the keyring over a real store: a revocation that
// commits while a lookup of the key is in flight with the still-valid
// record, and that reaches the keyring through the store's own Watch, is
// never undone by that lookup.
func contractKeyring(t *testing.T, open func(t *testing.T) Store) {
	t.Run("RevokeDuringHeldLookup", func(t *testing.T) {
		s := open(t)
		ctx := t.Context()
		contractCreateAccount(t, s, "acme")
		k := contractCreateKey(t, s, "acme", contractT0)
		held := newContractHeldStore(s)
		kr := newTestKeyring(t, held)
		w := contractStartWatchThen(t, s, kr.apply)
		w.sync(t, s, "acme")
		policy := lookupPolicy{ttl: time.Hour, negTTL: time.Hour, timeout: 30 * time.Second}
		get := func(what string) *entry {
			t.Helper()
			got := make(chan *entry, 1)
			go func() {
				e, _, err := testGet(kr, &k.Hash, policy)
				if err != nil {
					t.Errorf("%s: get: %v", what, err)
				}
				got <- e
			}()
			select {
			case e := <-got:
				return e
			case <-time.After(5 * time.Second):
				t.Fatalf("%s: get did not return within 5s (it waits for the held lookup?)", what)
				return nil
			}
		}

		held.holdNext(k.Hash)
		inflight := make(chan *entry, 1)
		go func() {
			e, _, err := testGet(kr, &k.Hash, policy)
			if err != nil {
				t.Errorf("held get: %v", err)
			}
			inflight <- e
		}()
		released := false
		defer func() {
			if !released {
				close(held.release)
			}
		}()
		select {
		case rec := <-held.answered:
			if rec.RevokedAt != nil {
				t.Fatal("the held lookup read a revoked record; the race is not set up")
			}
		case <-time.After(5 * time.Second):
			t.Fatal("the lookup did not reach the store within 5s")
		}

		from := w.mark()
		if _, err := s.RevokeKey(ctx, k.ID, contractT0.Add(time.Hour)); err != nil {
			t.Fatalf("RevokeKey: %v", err)
		}
		// Recorded only after kr.apply returned for it.
		w.waitFor(t, "RevokeKey", k.Hash, from)

		// A request after the revocation does not join the held lookup.
		if e := get("request after the revocation, lookup still held"); e == nil || !e.revoked {
			t.Fatalf("a request after the revocation was not served the revoked record (found=%v, revoked=%v)", e != nil && e.found, e != nil && e.revoked)
		}

		// Let the cache apply that answer, so a stale one set after it
		// would replace it (ristretto drops a second set of a key still
		// in its buffer, which would hide the bug this looks for).
		settle(kr)

		close(held.release)
		released = true
		select {
		case <-inflight: // asked before the revocation: either answer is fair
		case <-time.After(5 * time.Second):
			t.Fatal("the held get did not return within 5s of its release")
		}
		for i := range 3 {
			settle(kr)
			if e := get(fmt.Sprintf("get #%d after the held lookup returned", i+1)); e == nil || !e.revoked {
				t.Fatalf("after the held lookup returned, get #%d was not served the revoked record (found=%v, revoked=%v): the stale lookup re-cached the key",
					i+1, e != nil && e.found, e != nil && e.revoked)
			}
		}
	})
}

// contractT0 is the fixed creation time the contract tests build on. It
// has microseconds, which every store must keep.
var contractT0 = time.Date(2025, 3, 14, 15, 9, 26, 535897000, time.UTC)

// contractWatchTimeout is how soon a change must be reported by Watch.
const contractWatchTimeout = 2 * time.Second

// contractCreateAccount stores a growth account created at contractT0.
func contractCreateAccount(t *testing.T, s Store, id string) Account {
	t.Helper()
	a := Account{ID: id, Plan: "growth", CreatedAt: contractT0}
	if err := s.CreateAccount(t.Context(), a); err != nil {
		t.Fatalf("CreateAccount(%q): %v", id, err)
	}
	return a
}

// contractNewKey returns a record for a freshly issued key, not stored.
func contractNewKey(t testing.TB, account string, mode Mode, created time.Time) KeyRecord {
	t.Helper()
	plaintext, err := NewKey(mode)
	if err != nil {
		t.Fatalf("NewKey: %v", err)
	}
	id, err := newID("key_")
	if err != nil {
		t.Fatalf("newID: %v", err)
	}
	return KeyRecord{
		ID:        id,
		Account:   account,
		Name:      "key " + id,
		Mode:      mode,
		Redacted:  Redact(plaintext),
		CreatedAt: created,
		Hash:      HashKey(plaintext),
	}
}

// contractCreateKey stores a new live key of account.
func contractCreateKey(t *testing.T, s Store, account string, created time.Time) KeyRecord {
	t.Helper()
	k := contractNewKey(t, account, ModeLive, created)
	if err := s.CreateKey(t.Context(), k); err != nil {
		t.Fatalf("CreateKey(%s of %q): %v", k.ID, account, err)
	}
	return k
}

func contractCheckAccount(t *testing.T, what string, got, want Account) {
	t.Helper()
	if got.ID != want.ID {
		t.Errorf("%s: ID = %q, want %q", what, got.ID, want.ID)
	}
	if got.Plan != want.Plan {
		t.Errorf("%s: Plan = %q, want %q", what, got.Plan, want.Plan)
	}
	if got.Rate != want.Rate {
		t.Errorf("%s: Rate = %v, want %v", what, got.Rate, want.Rate)
	}
	if got.Burst != want.Burst {
		t.Errorf("%s: Burst = %d, want %d", what, got.Burst, want.Burst)
	}
	if !got.CreatedAt.Equal(want.CreatedAt) {
		t.Errorf("%s: CreatedAt = %v, want %v", what, contractFmtTime(got.CreatedAt), contractFmtTime(want.CreatedAt))
	}
	if (got.Quota == nil) != (want.Quota == nil) || (got.Quota != nil && *got.Quota != *want.Quota) {
		t.Errorf("%s: Quota = %v, want %v", what, got.Quota, want.Quota)
	}
	if contractFmtTimePtr(got.QuotaAnchor) != contractFmtTimePtr(want.QuotaAnchor) {
		t.Errorf("%s: QuotaAnchor = %v, want %v", what, contractFmtTimePtr(got.QuotaAnchor), contractFmtTimePtr(want.QuotaAnchor))
	}
}

// contractCheckKey compares every field of a key record; times compare as
// instants.
func contractCheckKey(t *testing.T, what string, got, want KeyRecord) {
	t.Helper()
	if got.ID != want.ID {
		t.Errorf("%s: ID = %q, want %q", what, got.ID, want.ID)
	}
	if got.Account != want.Account {
		t.Errorf("%s: Account = %q, want %q", what, got.Account, want.Account)
	}
	if got.Name != want.Name {
		t.Errorf("%s: Name = %q, want %q", what, got.Name, want.Name)
	}
	if got.Mode != want.Mode {
		t.Errorf("%s: Mode = %v, want %v", what, got.Mode, want.Mode)
	}
	if len(want.Scopes) == 0 {
		if len(got.Scopes) != 0 {
			t.Errorf("%s: Scopes = %q, want none", what, got.Scopes)
		}
	} else if !slices.Equal(got.Scopes, want.Scopes) {
		t.Errorf("%s: Scopes = %q, want %q", what, got.Scopes, want.Scopes)
	}
	if got.Redacted != want.Redacted {
		t.Errorf("%s: Redacted = %q, want %q", what, got.Redacted, want.Redacted)
	}
	if got.Legacy != want.Legacy {
		t.Errorf("%s: Legacy = %v, want %v", what, got.Legacy, want.Legacy)
	}
	if !got.CreatedAt.Equal(want.CreatedAt) {
		t.Errorf("%s: CreatedAt = %v, want %v", what, contractFmtTime(got.CreatedAt), contractFmtTime(want.CreatedAt))
	}
	for _, f := range []struct {
		name      string
		got, want *time.Time
	}{
		{"ExpiresAt", got.ExpiresAt, want.ExpiresAt},
		{"RevokedAt", got.RevokedAt, want.RevokedAt},
		{"LastUsedAt", got.LastUsedAt, want.LastUsedAt},
	} {
		if (f.got == nil) != (f.want == nil) || f.got != nil && !f.got.Equal(*f.want) {
			t.Errorf("%s: %s = %s, want %s", what, f.name, contractFmtTimePtr(f.got), contractFmtTimePtr(f.want))
		}
	}
	if got.Hash != want.Hash {
		t.Errorf("%s: Hash = %s, want %s", what, hex.EncodeToString(got.Hash[:]), hex.EncodeToString(want.Hash[:]))
	}
}

func contractFmtTime(t time.Time) string { return t.Format(time.RFC3339Nano) }

func contractFmtTimePtr(t *time.Time) string {
	if t == nil {
		return "nil"
	}
	return contractFmtTime(*t)
}

func contractKeyIDs(keys []KeyRecord) []string {
	ids := make([]string, len(keys))
	for i, k := range keys {
		ids[i] = k.ID
	}
	return ids
}

// contractWatch runs Store.Watch in a goroutine and records what it
// reports. It is stopped, and must return, when the test ends.
type contractWatch struct {
	cancel context.CancelFunc
	done   chan struct{} // closed when Watch returned
	err    error         // what Watch returned; read only after done

	mu      sync.Mutex
	changes []Change
}

func contractStartWatch(t *testing.T, s Store) *contractWatch {
	t.Helper()
	return contractStartWatchThen(t, s, nil)
}

// contractStartWatchThen is contractStartWatch, with every change passed
// to then (unless nil) before it is recorded: once a change is seen
// recorded, then has returned for it.
func contractStartWatchThen(t *testing.T, s Store, then func(Change)) *contractWatch {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	w := &contractWatch{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(w.done)
		w.err = s.Watch(ctx, func(c Change) {
			if then != nil {
				then(c)
			}
			w.mu.Lock()
			w.changes = append(w.changes, c)
			w.mu.Unlock()
		})
	}()
	// Registered after the store was opened, so it runs before the store
	// is closed.
	t.Cleanup(func() {
		cancel()
		select {
		case <-w.done:
		case <-time.After(5 * time.Second):
			t.Errorf("Watch did not return within 5s of its context being cancelled")
		}
	})
	return w
}

// seenAccount reports whether a change to the account was reported.
func (w *contractWatch) seenAccount(id string) bool { return w.seenAccountFrom(id, 0) }

// seenAccountFrom reports whether a change to the account was reported at
// or after position from.
func (w *contractWatch) seenAccountFrom(id string, from int) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, c := range w.changes[from:] {
		if c.Account == id {
			return true
		}
	}
	return false
}

// mark returns how many changes were reported so far.
func (w *contractWatch) mark() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.changes)
}

// seen reports whether a change to the key with hash h was reported at or
// after position from.
func (w *contractWatch) seen(h [sha256.Size]byte, from int) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, c := range w.changes[from:] {
		if c.KeyHash == h {
			return true
		}
	}
	return false
}

// sync waits until Watch is surely watching: until it reports a change
// made after it was started. It creates probe keys in account until one is
// reported, since a probe written before Watch got going is not.
func (w *contractWatch) sync(t *testing.T, s Store, account string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	var probes [][sha256.Size]byte
	for n := 0; time.Now().Before(deadline); n++ {
		p := contractNewKey(t, account, ModeTest, contractT0.Add(-time.Duration(n+1)*time.Second))
		p.Name = "watch probe"
		if err := s.CreateKey(t.Context(), p); err != nil {
			t.Fatalf("CreateKey(watch probe): %v", err)
		}
		probes = append(probes, p.Hash)
		wait := time.Now().Add(250 * time.Millisecond)
		for time.Now().Before(wait) {
			for _, h := range probes {
				if w.seen(h, 0) {
					return
				}
			}
			select {
			case <-w.done:
				t.Fatalf("Watch returned %v before reporting anything", w.err)
			case <-time.After(5 * time.Millisecond):
			}
		}
	}
	t.Fatalf("Watch reported none of %d keys created after it started, in 5s", len(probes))
}

// waitFor fails the test unless Watch reports a change to the key with
// hash h, at or after position from, within contractWatchTimeout.
func (w *contractWatch) waitFor(t *testing.T, what string, h [sha256.Size]byte, from int) {
	t.Helper()
	start := time.Now()
	for !w.seen(h, from) {
		if time.Since(start) > contractWatchTimeout {
			w.mu.Lock()
			got := len(w.changes) - from
			w.mu.Unlock()
			t.Fatalf("after %s, Watch reported %d changes in %v, none with KeyHash %s; want it reported within %v",
				what, got, contractWatchTimeout, hex.EncodeToString(h[:8]), contractWatchTimeout)
		}
		select {
		case <-w.done:
			t.Fatalf("after %s, Watch returned %v instead of reporting the change", what, w.err)
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func ptr[T any](v T) *T { return &v }
