// Package provider gives Go programs session keys that live and die inside a
// PKCS#11 token (an HSM, or SoftHSM in tests).
//
// A session key is an AES key generated on the token as a session object
// (CKA_TOKEN=false), private and sensitive: its value can never be read, and
// every encryption with it (AES-GCM) runs on the token. It is meant for one
// conversation, file or message, then thrown away.
//
// # Opening a token
//
//	p, err := provider.Open(ctx, provider.Config{
//		URI: "pkcs11:token=ci?module-path=/usr/lib/softhsm/libsofthsm2.so",
//		PIN: provider.PINFile("/run/secrets/hsm-pin"),
//	})
//	defer p.Close()
//
// The PIN is read once and tried once: a refused PIN gives a *PINError and is
// never retried (real HSMs lock after a few wrong tries). It is kept in memory
// only to restore a login the token lost, and never appears in an error, a
// log line or a String.
//
// # How long a key lives
//
// A session object belongs to the session that created it and is destroyed
// with it (PKCS#11 v2.40 §4.4). The provider therefore keeps a bounded pool of
// sessions (Config.MaxSessions) and never closes one while the provider is
// open: no idle reaping. A key lives until the first of
//   - Key.Destroy,
//   - Provider.Close (which destroys every key the provider made),
//   - the end of the process,
//   - the token dropping the key's session (token restart, device error,
//     C_CloseAllSessions elsewhere in the process). From then on the key
//     answers ErrKeyLost. The provider replaces dead sessions and logs in
//     again for new work; lost keys stay lost, which is what volatile keys are
//     for.
//
// # Concurrency
//
// Provider and Key are safe for concurrent use by many goroutines. An
// operation takes a session from the pool for its duration; when all are busy
// it waits, and the wait ends with its context. Close waits for operations in
// flight, and is idempotent.
//
// # Errors
//
// Callers branch with errors.Is on the exported sentinels (ErrNotFound,
// ErrKeyLost, ErrAuthentication, ...) and errors.As on *PINError,
// *TokenNotFoundError and *TokenError, which carries the raw CKR_* code.
// Bad input gets an error, never a panic.
package provider
