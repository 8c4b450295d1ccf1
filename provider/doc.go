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
// # Logs and metrics
//
// Config.Logger (a *slog.Logger) and Config.Metrics (hooks of plain
// functions) report what an operator of an HSM-backed service watches:
// waits for a session when all MaxSessions are in use, token calls tried
// again (with the function and CKR_* code), session keys lost, logins
// restored, and the token opened and closed. Neither ever receives a PIN,
// a key value, a wrapped key or data. Unset, they cost a nil check.
//
// # Which call for which job
//
//   - Open (the package function) opens a token and logs in; Key.Open
//     opens what Key.Seal sealed (the name crypto/cipher's AEAD uses).
//   - Small messages in memory: Key.Seal and Key.Open (up to MaxSealSize),
//     under a key from Generate.
//   - Data of any size, for readers holding a KEK: Encrypt (a reader, with
//     its size or UnknownSize) or NewEncrypter (a writer), and Decrypt. Each
//     message has a fresh session key; openssl cms opens it.
//   - Keeping a session key for later, or moving it to another token:
//     Export, Import, and Rewrap to change its KEKs. The blob is CMS
//     AuthEnvelopedData that names its KEKs, binds the encryption context
//     and carries a manifest (key ID, creation time, check value) that
//     Import checks. This is the normal way.
//   - Wrap, WrapWith, Unwrap and RewrapKey are the low-level layer: the
//     raw output of C_WrapKey (RFC 3394 or RFC 5649 key wrap, or RSA-OAEP)
//     as a WrappedKey, for systems that take such blobs and not CMS (a
//     cloud KMS key import, another HSM's C_UnwrapKey, a custom format).
//     A WrappedKey carries no context, no manifest and no check value: the
//     caller keeps KEKID, Mechanism and Algorithm with it, and binds it to
//     anything else itself.
//   - Looking at a blob or message: Inspect (no token, nothing
//     authenticated), InspectKey (an exported key's manifest, read on the
//     token).
//   - Listing tokens before opening one: TokensOf.
//
// # Errors
//
// Errors wrap a short prefix around what happened ("seal: ...") and never
// contain a PIN or key bytes. Callers branch with errors.Is on these
// sentinels:
//
//   - ErrNotFound: a token, KEK or object asked for is not there (a
//     *TokenNotFoundError lists the tokens that are).
//   - ErrClosed: the provider was closed; a key used after Close also
//     matches ErrKeyDestroyed.
//   - ErrKeyLost: the token dropped the session holding the key (token
//     restart, device error, sessions closed elsewhere); it is gone for good.
//   - ErrKeyDestroyed: the key was destroyed with Key.Destroy or Close.
//   - ErrKeyExhausted: the key reached Config.MaxSealsPerKey encryptions.
//   - ErrAuthentication: a ciphertext, its additional data or an exported
//     key's manifest failed the GCM tag check; no plaintext is returned.
//   - ErrContext: the encryption context given differs from the message's.
//   - ErrMalformed: the input is not well-formed CMS (truncated, bad DER).
//   - ErrWrongKind: a message given to Import, an exported key to Decrypt,
//     CMS of another content type (a *KindError says which).
//   - ErrWrappedKeyInvalid: a wrapped key failed its integrity check, was
//     wrapped under another KEK, or does not match its manifest.
//   - ErrInvalidInput: an argument is malformed (nil, empty, wrong length,
//     a size out of range).
//   - ErrUnsupported: the token lacks a mechanism or behaviour hsmkeys
//     needs, or a message uses a feature hsmkeys does not handle.
//   - ErrPolicy: the token did not apply a key attribute asked for, or
//     refuses an export the policy forbids (ExportNone, untrusted KEK).
//   - ErrTokenUnavailable: the token is not present or the device was
//     removed.
//   - ErrTokenBusy: the token kept failing calls that usually succeed when
//     made again (SoftHSM's file store under several processes); later may
//     work.
//   - ErrLoginHeld: another login of this process holds the token (an
//     Admin while a Provider opens, or the reverse); it ends when that one
//     closes.
//   - ErrConfig: the configuration is contradictory or incomplete (no
//     module, a bad URI, a module that does not load, two tokens match).
//   - ErrPINSource: a PIN source gave no PIN (missing or empty file, unset
//     variable, failed prompt); the token never saw a PIN.
//   - ErrSecretFile: a KEK value file is unsafe (mode, owner, a link) or
//     malformed.
//   - ErrSecretTooLong: a PIN or secret file is longer than any valid one;
//     refused before the token saw it.
//   - ErrNoModule: no module is configured and p11-kit's proxy is not
//     installed (a *NoModuleError lists the modules p11-kit registers).
//     Matches ErrConfig too.
//   - ErrAmbiguous: a URI or name matches several objects (for example an
//     object URI without id= naming a KEK with several versions).
//   - ErrVersionConflict: other administrators kept making the same KEK
//     version at the same moment; nothing was left on the token.
//
// and with errors.As on these types:
//
//   - *PINError: the token refused a PIN (SO or user, with the token's
//     count-low, final-try and locked flags); never tried again.
//   - *TokenNotFoundError: the token asked for is not there; lists those
//     that are. Matches ErrNotFound.
//   - *KindError: input of another kind than the call takes. Matches
//     ErrWrongKind.
//   - *NoModuleError: no module configured; lists the modules p11-kit
//     registers. Matches ErrNoModule and ErrConfig.
//   - *TokenError: the PKCS#11 function and CKR_* code behind any error a
//     token call caused, with its name; unwraps to the sentinel its code
//     stands for (ErrTokenUnavailable, ErrUnsupported, ErrLoginHeld).
//
// Bad input gets an error, never a panic.
package provider
