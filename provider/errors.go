package provider

import (
	"errors"
	"fmt"
	"slices"
	"strings"
)

// Errors a caller can branch on with errors.Is. Errors that came from the
// token also carry a *TokenError with the raw CKR_* code, reachable through
// errors.As.
var (
	// ErrNotFound: a token, KEK or object that was asked for is not there.
	ErrNotFound = errors.New("not found")
	// ErrClosed: the provider was closed (Close or Shutdown began). A key
	// used after that answers an error that matches both ErrClosed and
	// ErrKeyDestroyed: Close destroyed it.
	ErrClosed = errors.New("provider closed")
	// ErrKeyLost: the token dropped the session that held this session key
	// (token restart, device error, sessions closed under us). The key is gone
	// for good; that is what a volatile key is for.
	ErrKeyLost = errors.New("session key lost: its token session is gone")
	// ErrKeyDestroyed: the key was destroyed with Destroy or Close (after
	// Close the error also matches ErrClosed).
	ErrKeyDestroyed = errors.New("session key destroyed")
	// ErrAuthentication: a ciphertext or its additional data failed the GCM
	// tag check. No plaintext is returned.
	ErrAuthentication = errors.New("message authentication failed")
	// ErrKeyExhausted: the key reached its encryption limit (NIST SP 800-38D
	// §8.3 for random 96-bit nonces); generate a new one.
	ErrKeyExhausted = errors.New("session key reached its encryption limit")
	// ErrUnsupported: the token lacks a mechanism or behaviour hsmkeys needs.
	ErrUnsupported = errors.New("not supported by this token")
	// ErrPolicy: the token did not apply a key attribute that was asked for,
	// or an object lacks the attributes policy requires.
	ErrPolicy = errors.New("key policy not enforced")
	// ErrInvalidInput: an argument is malformed (nil, empty, wrong length).
	ErrInvalidInput = errors.New("invalid input")
	// ErrWrongKind: the input is well-formed but of another kind than the
	// call takes: an encrypted message given to Import, an exported key
	// given to Decrypt, a CMS message of another content type. The error,
	// a *KindError, says what the input is.
	ErrWrongKind = errors.New("wrong kind of input")
	// ErrTokenUnavailable: the token is not present or the device was removed.
	ErrTokenUnavailable = errors.New("token unavailable")
	// ErrWrappedKeyInvalid: a wrapped key failed its integrity check, was
	// wrapped under another KEK, or is not a key of the stated kind.
	ErrWrappedKeyInvalid = errors.New("wrapped key invalid or wrong kek")
	// ErrConfig: the configuration is contradictory or incomplete.
	ErrConfig = errors.New("invalid configuration")
	// ErrTokenBusy: the token kept failing calls that usually succeed when
	// made again (CKR_GENERAL_ERROR and the like from calls that had no
	// effect), as SoftHSM's file store does while other processes use the
	// same token (SoftHSMv2 #757). The provider tried a few times with a
	// short wait before giving up; trying again later may work.
	ErrTokenBusy = errors.New("token busy or failing")
	// ErrLoginHeld: the token is logged in, in this process, as another
	// user than the call needs: an Admin (Security Officer) while a
	// Provider opens, or a Provider (user) while OpenAdmin logs in. Login
	// state belongs to the whole application, not to a session (PKCS#11
	// v2.40 §5.6, C_Login: CKR_USER_ANOTHER_ALREADY_LOGGED_IN); it ends
	// when the other holder closes.
	ErrLoginHeld = errors.New("another login holds the token in this process")
)

// PINError reports a PIN the token refused. The provider tries a PIN once and
// never again: real tokens lock after a few wrong tries.
type PINError struct {
	// SO is true for the Security Officer PIN, false for the user PIN.
	SO bool
	// CountLow, FinalTry and Locked are the token's flags after the refusal
	// (CKF_USER_PIN_COUNT_LOW, _FINAL_TRY, _LOCKED; PKCS#11 v2.40 §3.2
	// CK_TOKEN_INFO), when the token reports them.
	CountLow, FinalTry, Locked bool
	err                        error
}

func (e *PINError) Error() string {
	who := "user"
	if e.SO {
		who = "so"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s pin rejected by the token", who)
	switch {
	case e.Locked:
		b.WriteString(" (pin locked)")
	case e.FinalTry:
		b.WriteString(" (one try left before the pin locks)")
	case e.CountLow:
		b.WriteString(" (wrong tries counted; few left)")
	}
	if e.err != nil {
		fmt.Fprintf(&b, ": %v", e.err)
	}
	return b.String()
}

func (e *PINError) Unwrap() error { return e.err }

// TokenNotFoundError lists the tokens that are there when the one asked for
// is not. It matches ErrNotFound.
type TokenNotFoundError struct {
	Want   string      // what was asked for, e.g. `label "ci"`
	Tokens []TokenInfo // what the module offers
	// Tries is how often Open looked: it looks again, loading the module
	// anew, because a token that is busy with other processes can be
	// missing from the slot list for a moment (SoftHSMv2 #757).
	Tries int
	// Seen is true when an earlier try found the token and failed later
	// (then the token exists and was busy; the error also matches
	// ErrTokenBusy).
	Seen bool
}

func (e *TokenNotFoundError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "token %s not found", e.Want)
	switch {
	case e.Seen:
		fmt.Fprintf(&b, " (it was there a moment ago; tried %d times)", e.Tries)
	case e.Tries > 1 && !slices.ContainsFunc(e.Tokens, func(t TokenInfo) bool { return t.Initialized }):
		fmt.Fprintf(&b, " (tried %d times)", e.Tries)
	}
	if len(e.Tokens) == 0 {
		b.WriteString("; the module shows no token")
		return b.String()
	}
	b.WriteString("; tokens present:")
	for i, t := range e.Tokens {
		if i > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, " %s", t)
	}
	return b.String()
}

func (e *TokenNotFoundError) Is(target error) bool {
	return target == ErrNotFound || (e.Seen && target == ErrTokenBusy)
}
