package provider

//go:generate go run gen_ckrnames.go

import (
	"errors"
	"fmt"

	"github.com/hsmkeys/hsmkeys/provider/internal/p11"
	"github.com/miekg/pkcs11"
)

// TokenError is a PKCS#11 return value other than CKR_OK (PKCS#11 v2.40
// base §5.1, 3.0 base §5.1), as the token returned it. Every error that a
// token call caused carries one, reachable with errors.As:
//
//	var te *provider.TokenError
//	if errors.As(err, &te) && te.Code == 0x30 { // CKR_DEVICE_ERROR
//		log.Printf("%s failed: %s", te.Op, te.Name())
//	}
//
// Branch on the sentinels first (errors.Is); the code is for logs, for
// support, and for the rare caller that must tell two token failures apart.
// A TokenError unwraps to the sentinel its code stands for when there is
// one: ErrTokenUnavailable for CKR_DEVICE_REMOVED and CKR_TOKEN_NOT_PRESENT,
// ErrUnsupported for CKR_MECHANISM_INVALID, CKR_MECHANISM_PARAM_INVALID and
// CKR_FUNCTION_NOT_SUPPORTED, ErrLoginHeld for
// CKR_USER_ANOTHER_ALREADY_LOGGED_IN.
type TokenError struct {
	// Op is the PKCS#11 function that failed, for example "C_Encrypt".
	Op string
	// Code is the CK_RV it returned, for example 0x5 (CKR_GENERAL_ERROR).
	Code uint
}

// Name is the CKR_* name of Code ("CKR_GENERAL_ERROR"), from the PKCS#11
// v2.40 and 3.0 return values. A vendor code is "CKR_VENDOR_DEFINED+0x..."
// and an unknown one "CKR_UNKNOWN".
func (e *TokenError) Name() string { return codeName(e.Code) }

// String is Name.
func (e *TokenError) String() string { return e.Name() }

// Error is "C_Encrypt: CKR_GENERAL_ERROR (0x5)".
func (e *TokenError) Error() string {
	return fmt.Sprintf("%s: %s (0x%X)", e.Op, e.Name(), e.Code)
}

// Unwrap is the sentinel the code stands for, or nil.
func (e *TokenError) Unwrap() error { return codeSentinel(e.Code) }

// codeName is the CKR_* name of a PKCS#11 return value, as TokenError.Name
// gives it.
func codeName(code uint) string {
	if n, ok := ckrNames[code]; ok {
		return n
	}
	if code >= pkcs11.CKR_VENDOR_DEFINED {
		return fmt.Sprintf("CKR_VENDOR_DEFINED+0x%X", code-pkcs11.CKR_VENDOR_DEFINED)
	}
	return "CKR_UNKNOWN"
}

// codeSentinel is the sentinel a return value stands for whatever the call:
// the token is gone (PKCS#11 v2.40 §5.1.2), or it lacks a mechanism or
// function (§5.1.6, §5.1.1).
func codeSentinel(code uint) error {
	switch code {
	case pkcs11.CKR_DEVICE_REMOVED, pkcs11.CKR_TOKEN_NOT_PRESENT:
		return ErrTokenUnavailable
	case pkcs11.CKR_MECHANISM_INVALID, pkcs11.CKR_MECHANISM_PARAM_INVALID, pkcs11.CKR_FUNCTION_NOT_SUPPORTED:
		return ErrUnsupported
	case pkcs11.CKR_USER_ANOTHER_ALREADY_LOGGED_IN:
		return ErrLoginHeld
	}
	return nil
}

// tokenErrorChain puts a *TokenError in front of an error chain that holds
// the internal p11 error, so that errors.As finds the public type and
// errors.Is the sentinel its code stands for. Its text is err's.
type tokenErrorChain struct {
	err error
	te  *TokenError
}

func (c *tokenErrorChain) Error() string   { return c.err.Error() }
func (c *tokenErrorChain) Unwrap() []error { return []error{c.err, c.te} }

func (c *tokenErrorChain) As(target any) bool {
	if t, ok := target.(**TokenError); ok {
		*t = c.te
		return true
	}
	return false
}

// withTokenError makes the token's error in err reachable as a *TokenError
// (errors.As); mapErr calls it on every error it maps. An error that
// already exposes one, or holds none, is returned as it is.
func withTokenError(err error) error {
	var pe *p11.Error
	if err == nil || !errors.As(err, &pe) {
		return err
	}
	var te *TokenError
	if errors.As(err, &te) {
		return err
	}
	return &tokenErrorChain{err: err, te: &TokenError{Op: pe.Op, Code: pe.Code}}
}

// Overhead is what Seal adds to a plaintext: a 12-byte nonce and a 16-byte
// tag.
const Overhead = 28

// The constant above, for go doc, is the sum of the sizes Seal uses.
var _ = [1]struct{}{}[Overhead-(p11.NonceSize+p11.TagSize)]
