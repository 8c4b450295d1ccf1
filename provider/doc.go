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
// Key.Destroy destroys the token object whatever its context says: a
// context that ended (a deferred Destroy at the end of a request) only
// stops a wait for a session. If no session is free at once, Destroy
// returns an error and the key stays with the provider, unusable, until a
// later Destroy or Close destroys it; no object is left behind unnoticed.
//
// Shutdown(ctx) is Close with a bound: new operations fail with ErrClosed
// at once, and when ctx ends first Shutdown destroys the keys no operation
// is using and returns ctx's error. An operation blocked in the caller's
// reader or writer (an Encrypt whose src.Read does not return) then ends
// with ErrClosed when that call returns, and the rest (its key, the
// sessions, the module) is released after it.
//
// # Round trips
//
// On a networked HSM every PKCS#11 call is a round trip. Each operation
// makes only the calls it cannot avoid in steady state (Generate and
// Destroy 2, Seal 2, Export 3 and 1 per KEK, Import 6, Encrypt of one part 5,
// Decrypt up to 4 MiB 4; docs/performance.md says why each is needed),
// and TokenCalls counts them. Config.DataKeyCache (opt-in) reuses a
// session key for several messages, within limits, so that Encrypt and
// Decrypt of a small message cost 2 calls, as Seal and Open do.
//
// # Several processes
//
// Several processes may use one token. Some tokens fail calls for a moment
// while another process writes to them: SoftHSM's file object store does
// (SoftHSMv2 #757), with the token missing from the slot list, or
// CKR_GENERAL_ERROR from C_GetTokenInfo and C_Login. Open therefore tries
// again, a few times with a short random wait that ends with its context,
// what had no effect: finding the token, reading its information, opening
// a session, and a login the token failed before looking at the PIN. A PIN
// the token refused is never tried again, nor a call that may have made
// something (C_GenerateKey). When Open gives up, the error says how often
// it tried and matches ErrTokenBusy if the token was there a moment before.
//
// # Errors
//
// Callers branch with errors.Is on the exported sentinels (ErrNotFound,
// ErrKeyLost, ErrAuthentication, ...) and errors.As on *PINError,
// *TokenNotFoundError and *TokenError, which carries the raw CKR_* code.
// Bad input gets an error, never a panic.
package provider
