package main

import (
	"fmt"
	"strings"
	"testing"

	"github.com/hsmkeys/hsmkeys/provider"
	"github.com/stretchr/testify/assert"
)

// TestBusyTokenHints: a token that other processes kept busy (SoftHSMv2
// #757) is not called missing: the hint says to try again, not to
// initialise a token. Only when a single look found no token is
// "initialise a token first" the whole hint.
func TestBusyTokenHints(t *testing.T) {
	free := provider.TokenInfo{Slot: 0}
	for _, tc := range []struct {
		name      string
		err       error
		want, not string
	}{
		{"seen, then gone", &provider.TokenNotFoundError{Want: `label "a"`, Tokens: []provider.TokenInfo{free}, Tries: 10, Seen: true}, "try again", "initialise a token first"},
		{"never seen, tried", &provider.TokenNotFoundError{Want: `label "a"`, Tokens: []provider.TokenInfo{free}, Tries: 10}, "try again", "initialise a token first"},
		{"one look", &provider.TokenNotFoundError{Want: `label "a"`, Tokens: []provider.TokenInfo{free}, Tries: 1}, "initialise a token first", "try again"},
		{"busy", fmt.Errorf("%w: C_GetTokenInfo: CKR_GENERAL_ERROR (0x5) (tried 10 times)", provider.ErrTokenBusy), "try again", "initialise"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := strings.Join(hints(tc.err), "\n")
			assert.Contains(t, h, tc.want)
			assert.NotContains(t, h, tc.not)
		})
	}
}
