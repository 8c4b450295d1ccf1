// Package gocloud is a gocloud.dev/secrets driver backed by hsmkeys: every
// Encrypt makes one envelope, a fresh AES-256 session key generated on the
// PKCS#11 token, the message sealed under it by the token (AES-GCM) and the
// key wrapped under a KEK that never leaves the token; every Decrypt
// unwraps the key into the token, opens the message there and destroys the
// key. The ciphertext is the CMS message hsmkeys encrypt writes (docs/
// format.md, Adapters): hsmkeys decrypt and openssl cms open it.
//
// # URLs
//
// For secrets.OpenKeeper, the package registers the scheme "hsmkeys":
//
//	hsmkeys://KEKNAME?module=/usr/lib/softhsm/libsofthsm2.so&token=ci&pin_file=/run/secrets/pin
//
// KEKNAME is the KEK's label; its newest version seals. The query
// parameters module, token, uri (an RFC 7512 PKCS#11 URI, escaped) and
// pin_file choose the token; what they leave out comes from HSMKEYS_URI,
// HSMKEYS_MODULE, HSMKEYS_TOKEN, HSMKEYS_PIN and HSMKEYS_PIN_FILE, as for
// the hsmkeys command. A PIN in the URL (pin, pin-value, user information)
// is refused: URLs end up in logs.
//
// Each opened Keeper logs in to the token once and holds its session pool
// until Close. Keepers are safe for concurrent use.
//
// # As
//
// ErrorAs reaches the provider's error types: *provider.PINError,
// *provider.TokenError (the raw CKR_* code) and *provider.TokenNotFoundError.
package gocloud

import (
	"context"
	"errors"
	"net/url"
	"os"

	"github.com/hsmkeys/hsmkeys/integrations/internal/envelope"
	"github.com/hsmkeys/hsmkeys/provider"
	"gocloud.dev/gcerrors"
	"gocloud.dev/secrets"
)

// Scheme is the URL scheme the package registers its URLOpener under on
// secrets.DefaultURLMux.
const Scheme = "hsmkeys"

func init() {
	secrets.DefaultURLMux().RegisterKeeper(Scheme, &URLOpener{})
}

// URLOpener opens hsmkeys:// URLs (see the package documentation).
type URLOpener struct {
	// Getenv reads the HSMKEYS_* variables; nil means os.Getenv.
	Getenv func(string) string
}

// OpenKeeperURL opens the token the URL names and finds its KEK.
func (o *URLOpener) OpenKeeperURL(ctx context.Context, u *url.URL) (*secrets.Keeper, error) {
	s, err := envelope.FromURL(u)
	if err != nil {
		return nil, err
	}
	getenv := o.Getenv
	if getenv == nil {
		getenv = os.Getenv
	}
	e, err := envelope.Open(ctx, s, getenv)
	if err != nil {
		return nil, err
	}
	return secrets.NewKeeper(&keeper{e: e}), nil
}

// OpenKeeper returns a Keeper for the KEK named kek on p. p stays the
// caller's: the Keeper's Close leaves it open.
func OpenKeeper(ctx context.Context, p *provider.Provider, kek string) (*secrets.Keeper, error) {
	k, err := newKeeper(ctx, p, kek)
	if err != nil {
		return nil, err
	}
	return secrets.NewKeeper(k), nil
}

func newKeeper(ctx context.Context, p *provider.Provider, kek string) (*keeper, error) {
	e, err := envelope.New(ctx, p, kek)
	if err != nil {
		return nil, err
	}
	return &keeper{e: e}, nil
}

// keeper is the driver.Keeper.
type keeper struct{ e *envelope.Envelope }

// Encrypt makes one envelope of plaintext.
func (k *keeper) Encrypt(ctx context.Context, plaintext []byte) ([]byte, error) {
	return k.e.Seal(ctx, plaintext, nil)
}

// Decrypt opens an envelope made for a version of the keeper's KEK.
func (k *keeper) Decrypt(ctx context.Context, ciphertext []byte) ([]byte, error) {
	return k.e.Open(ctx, ciphertext, nil)
}

// Close closes the token if the keeper opened it.
func (k *keeper) Close() error { return k.e.Close() }

// ErrorAs is errors.As over the provider's errors.
func (k *keeper) ErrorAs(err error, i any) bool { return errors.As(err, i) }

// ErrorCode maps the provider's sentinels to gcerrors codes.
func (k *keeper) ErrorCode(err error) gcerrors.ErrorCode { return ErrorCode(err) }

// ErrorCode is the gcerrors code of an error of the provider:
//
//	context.Canceled, context.DeadlineExceeded      Canceled, DeadlineExceeded
//	*provider.PINError, ErrPINSource                PermissionDenied
//	ErrKeyExhausted                                 ResourceExhausted
//	ErrKeyLost, ErrTokenUnavailable                 Internal
//	ErrNotFound (no such KEK; not this KEK's message) NotFound
//	ErrAuthentication, ErrContext, ErrMalformed,
//	ErrWrappedKeyInvalid, ErrInvalidInput, ErrConfig InvalidArgument
//	ErrUnsupported                                  Unimplemented
//	ErrPolicy, ErrClosed, ErrKeyDestroyed           FailedPrecondition
//	anything else                                   Unknown
func ErrorCode(err error) gcerrors.ErrorCode {
	var pe *provider.PINError
	switch {
	case err == nil:
		return gcerrors.OK
	case errors.Is(err, context.Canceled):
		return gcerrors.Canceled
	case errors.Is(err, context.DeadlineExceeded):
		return gcerrors.DeadlineExceeded
	case errors.As(err, &pe), errors.Is(err, provider.ErrPINSource):
		return gcerrors.PermissionDenied
	case errors.Is(err, provider.ErrKeyExhausted):
		return gcerrors.ResourceExhausted
	case errors.Is(err, provider.ErrKeyLost), errors.Is(err, provider.ErrTokenUnavailable):
		return gcerrors.Internal
	case errors.Is(err, provider.ErrNotFound):
		return gcerrors.NotFound
	case errors.Is(err, provider.ErrAuthentication), errors.Is(err, provider.ErrContext),
		errors.Is(err, provider.ErrMalformed), errors.Is(err, provider.ErrWrappedKeyInvalid),
		errors.Is(err, provider.ErrInvalidInput), errors.Is(err, provider.ErrConfig):
		return gcerrors.InvalidArgument
	case errors.Is(err, provider.ErrUnsupported):
		return gcerrors.Unimplemented
	case errors.Is(err, provider.ErrPolicy), errors.Is(err, provider.ErrClosed), errors.Is(err, provider.ErrKeyDestroyed):
		return gcerrors.FailedPrecondition
	}
	return gcerrors.Unknown
}
