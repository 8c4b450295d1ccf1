//go:build ignore

/*
 * faultmod: a PKCS#11 v2.40 module that forwards every call to a real module
 * and injects latency and faults on the way, for tests.
 *
 * The "go:build ignore" line above keeps the go tool from treating this file
 * as cgo source of package faultmod; faultmod.go embeds it and compiles it
 * with gcc into a shared library instead.
 *
 * Environment, read on the first C_GetFunctionList/C_Initialize (the control
 * and stats paths again on every C_Initialize after a C_Finalize):
 *   FAULTMOD_TARGET   path of the real module (required)
 *   FAULTMOD_CONTROL  control file (optional; absent file = no faults)
 *   FAULTMOD_STATS    stats file, written on C_Finalize and on "stats"
 *
 * The control-file grammar is documented in faultmod.go (package doc).
 * Locking: mu guards configuration, counters and session tracking and is
 * never held while sleeping or calling the real module; reload_mu
 * serialises control-file reloads; load_mu guards dlopen of the target;
 * stats_mu serialises writes of the stats file.
 */

#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* Platform macros required before pkcs11.h (PKCS#11 v2.40 base, 2.1). */
#define CK_PTR *
#define CK_DEFINE_FUNCTION(returnType, name) returnType name
#define CK_DECLARE_FUNCTION(returnType, name) returnType name
#define CK_DECLARE_FUNCTION_POINTER(returnType, name) returnType (*name)
#define CK_CALLBACK_FUNCTION(returnType, name) returnType (*name)
#ifndef NULL_PTR
#define NULL_PTR 0
#endif
#include "include/pkcs11.h"

/* One index per CK_FUNCTION_LIST entry, in list order, from pkcs11f.h. */
enum {
#define CK_PKCS11_FUNCTION_INFO(name) FN_##name,
#include "include/pkcs11f.h"
#undef CK_PKCS11_FUNCTION_INFO
	FN_COUNT
};

static const char *const fn_names[FN_COUNT] = {
#define CK_PKCS11_FUNCTION_INFO(name) #name,
#include "include/pkcs11f.h"
#undef CK_PKCS11_FUNCTION_INFO
};

#define MAX_RULES 64
#define MAX_HOLDS 8
#define HOLD_PATH_MAX 1024
#define MAX_CONTROL_BYTES (1 << 20)
#define ALL_FUNCTIONS (-1)

struct rule {
	int fn;			/* FN_* or ALL_FUNCTIONS ("*") */
	CK_RV rv;		/* code to inject */
	unsigned long every;	/* 0: any call; else calls N, 2N, ... */
	unsigned long from;	/* 0: any call; else calls K, K+1, ... */
	unsigned long limit;	/* 0: unlimited; else at most this many faults */
	double prob;		/* < 0: no probability condition */
	uint64_t rng;		/* splitmix64 state, starts at the seed */
	int after;		/* forward first, then replace the answer */
	unsigned long calls;	/* matching calls since this rule was loaded */
	unsigned long injected;	/* faults this rule injected */
};

/* A hold line: matching calls wait, before they are forwarded, while path exists. */
struct hold {
	int fn;			/* FN_* or ALL_FUNCTIONS ("*") */
	unsigned long every;	/* as in struct rule */
	unsigned long from;
	unsigned long limit;	/* 0: unlimited; else at most this many held calls */
	unsigned long calls;	/* matching calls since this line was loaded */
	unsigned long held;	/* calls this line held */
	int after;		/* hold the answer: forward first, then wait */
	char path[HOLD_PATH_MAX];
};

struct config {
	uint64_t generation;
	int has_generation;
	long long latency_us;
	long long fn_latency_us[FN_COUNT];	/* < 0: use latency_us */
	struct rule rules[MAX_RULES];
	int nrules;
	unsigned long max_sessions;	/* 0: no cap */
	int close_all;
	int stats;
	CK_RV gone;		/* 0: token present */
	int errors;
	struct hold holds[MAX_HOLDS];
	int nholds;
	unsigned personality;	/* P_* bits: simulated vendor behaviour */
};

struct filekey {
	int present;
	dev_t dev;
	ino_t ino;
	off_t size;
	struct timespec mtim, ctim;
};

struct session {
	CK_SESSION_HANDLE h;
	CK_SLOT_ID slot;
};

static pthread_mutex_t load_mu = PTHREAD_MUTEX_INITIALIZER;
static void *real_dl;
static CK_FUNCTION_LIST_PTR real_fl;	/* atomic: set once under load_mu */

static pthread_mutex_t reload_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;

/* Everything below is guarded by mu. */
static struct {
	char *control_path;
	char *stats_path;
	struct config cfg;
	struct filekey key;
	int key_valid;
	uint64_t auto_generation;
	uint64_t close_generation;
	int close_generation_valid;
	uint64_t stats_generation;
	int stats_generation_valid;
	int pending_close_all;
	int initialized;
	unsigned long calls[FN_COUNT];
	unsigned long injected[FN_COUNT];
	unsigned long loads;
	unsigned long load_errors;
	struct session *sessions;
	size_t nsessions, capsessions;
	unsigned long reserved;	/* C_OpenSession calls in flight */
	unsigned long holding;	/* calls waiting on a hold line now */
	unsigned long held;	/* calls held since C_Initialize */
	unsigned long inside;	/* calls forwarded to the real module and not yet answered */
	int closing;		/* a close of every session waits for inside == 0, or runs */
} st;

/* Signalled when inside drops to 0 and when a close has run (mu). */
static pthread_cond_t quiet = PTHREAD_COND_INITIALIZER;

static void lock(pthread_mutex_t *m)
{
	pthread_mutex_lock(m);
}

static void unlock(pthread_mutex_t *m)
{
	pthread_mutex_unlock(m);
}

static CK_FUNCTION_LIST_PTR real(void)
{
	return __atomic_load_n(&real_fl, __ATOMIC_ACQUIRE);
}

/* ---------- configuration parsing ---------- */

struct code_name {
	const char *name;
	CK_RV rv;
};

#define CODE(x) { #x, x }
static const struct code_name code_names[] = {
	CODE(CKR_HOST_MEMORY),
	CODE(CKR_GENERAL_ERROR),
	CODE(CKR_FUNCTION_FAILED),
	CODE(CKR_ARGUMENTS_BAD),
	CODE(CKR_DEVICE_ERROR),
	CODE(CKR_DEVICE_MEMORY),
	CODE(CKR_DEVICE_REMOVED),
	CODE(CKR_FUNCTION_CANCELED),
	CODE(CKR_KEY_HANDLE_INVALID),
	CODE(CKR_OBJECT_HANDLE_INVALID),
	CODE(CKR_OPERATION_ACTIVE),
	CODE(CKR_PIN_INCORRECT),
	CODE(CKR_PIN_LOCKED),
	CODE(CKR_SESSION_CLOSED),
	CODE(CKR_SESSION_COUNT),
	CODE(CKR_SESSION_HANDLE_INVALID),
	CODE(CKR_TOKEN_NOT_PRESENT),
	CODE(CKR_TOKEN_NOT_RECOGNIZED),
	CODE(CKR_USER_NOT_LOGGED_IN),
	CODE(CKR_CRYPTOKI_NOT_INITIALIZED),
};
#undef CODE

/* parse_ulong accepts decimal or 0x-prefixed hex, nothing else. */
static int parse_ulong(const char *s, unsigned long long *out)
{
	int base = 10;
	char *end;

	if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
		base = 16;
		s += 2;
	}
	if (*s == '\0' || *s == '-' || *s == '+' || *s == ' ')
		return -1;
	errno = 0;
	*out = strtoull(s, &end, base);
	if (errno != 0 || *end != '\0')
		return -1;
	return 0;
}

static int parse_code(const char *s, CK_RV *out)
{
	unsigned long long v;
	size_t i;

	for (i = 0; i < sizeof(code_names) / sizeof(code_names[0]); i++) {
		if (strcmp(s, code_names[i].name) == 0) {
			*out = code_names[i].rv;
			return 0;
		}
	}
	if (parse_ulong(s, &v) != 0 || v == CKR_OK || v > 0xffffffffULL)
		return -1;
	*out = (CK_RV)v;
	return 0;
}

/* parse_fn returns an FN_* index, ALL_FUNCTIONS for "*", or -2. */
static int parse_fn(const char *s)
{
	int i;

	if (strcmp(s, "*") == 0)
		return ALL_FUNCTIONS;
	for (i = 0; i < FN_COUNT; i++)
		if (strcmp(s, fn_names[i]) == 0)
			return i;
	return -2;
}

static void config_init(struct config *c)
{
	int i;

	memset(c, 0, sizeof(*c));
	for (i = 0; i < FN_COUNT; i++)
		c->fn_latency_us[i] = -1;
}

#define MAX_WORDS 16

static const char *parse_fail(struct config *c, char **w, int n)
{
	struct rule r;
	unsigned long long v;
	int i;

	if (n < 3)
		return "want: fail FUNCTION|* CODE [every N] [from K] [prob P [seed S]] [count C] [after]";
	memset(&r, 0, sizeof(r));
	r.prob = -1;
	r.fn = parse_fn(w[1]);
	if (r.fn == -2)
		return "unknown function";
	if (r.fn == FN_C_GetFunctionList)
		return "C_GetFunctionList cannot fail";
	if (parse_code(w[2], &r.rv) != 0)
		return "bad CKR code (want a known CKR_ name or a non-zero number)";
	for (i = 3; i < n; i++) {
		const char *k = w[i];

		if (strcmp(k, "after") == 0) {
			r.after = 1;
			continue;
		}
		if (i + 1 >= n)
			return "option without value";
		if (strcmp(k, "prob") == 0) {
			char *end;
			double p;

			errno = 0;
			p = strtod(w[i + 1], &end);
			if (errno != 0 || *end != '\0' || !(p >= 0 && p <= 1))
				return "prob wants a number in [0,1]";
			r.prob = p;
			i++;
			continue;
		}
		if (parse_ulong(w[i + 1], &v) != 0)
			return "option wants a decimal or 0x number";
		if (strcmp(k, "every") == 0 && v > 0)
			r.every = v;
		else if (strcmp(k, "from") == 0 && v > 0)
			r.from = v;
		else if (strcmp(k, "count") == 0)
			r.limit = v;
		else if (strcmp(k, "seed") == 0)
			r.rng = v;
		else
			return "unknown option (every N>0, from K>0, prob P, seed S, count C, after)";
		i++;
	}
	if (c->nrules >= MAX_RULES)
		return "too many fail lines";
	c->rules[c->nrules++] = r;
	return NULL;
}

/* parse_hold: hold FUNCTION|* PATH [every N] [from K] [count C] [after] */
static const char *parse_hold(struct config *c, char **w, int n)
{
	struct hold *h;
	unsigned long long v;
	int i, fn;

	if (n < 3)
		return "want: hold FUNCTION|* PATH [every N] [from K] [count C] [after]";
	fn = parse_fn(w[1]);
	if (fn == -2)
		return "unknown function";
	if (fn == FN_C_GetFunctionList)
		return "C_GetFunctionList cannot be held";
	if (w[2][0] != '/' || strlen(w[2]) >= HOLD_PATH_MAX)
		return "hold wants an absolute path shorter than 1024 bytes";
	if (c->nholds >= MAX_HOLDS)
		return "too many hold lines";
	h = &c->holds[c->nholds];
	memset(h, 0, sizeof(*h));
	h->fn = fn;
	strcpy(h->path, w[2]);
	for (i = 3; i < n; i += 2) {
		if (strcmp(w[i], "after") == 0) {
			h->after = 1;
			i--;
			continue;
		}
		if (i + 1 >= n)
			return "option without value";
		if (parse_ulong(w[i + 1], &v) != 0)
			return "option wants a decimal or 0x number";
		if (strcmp(w[i], "every") == 0 && v > 0)
			h->every = v;
		else if (strcmp(w[i], "from") == 0 && v > 0)
			h->from = v;
		else if (strcmp(w[i], "count") == 0)
			h->limit = v;
		else
			return "unknown option (every N>0, from K>0, count C, after)";
	}
	c->nholds++;
	return NULL;
}

/*
 * Personalities: vendor behaviour simulated over SoftHSM (see faultmod.go).
 * Each reports itself by its own C_GetTokenInfo model, so that profile by
 * identity can be tested too.
 */
enum {
	P_IV_PARAMS = 1,	/* makes the GCM IV, writes it into pIv (CloudHSM) */
	P_IV_APPEND = 2,	/* makes the GCM IV, returns ct || tag || iv */
	P_CAP16K = 4,		/* at most 16 KiB per encrypt/decrypt call */
	P_NO_MULTIPART_GCM = 8,	/* C_*Update under CKM_AES_GCM refused */
	P_TAG_INVALID = 16,	/* bad tag: CKR_ENCRYPTED_DATA_INVALID */
	P_NO_GCM = 32,		/* no CKM_AES_GCM, no AES key wrap */
	P_CRYPTOKI_220 = 64,	/* Cryptoki 2.20: no CKA_COPYABLE, CKA_WRAP_WITH_TRUSTED */
	P_UNWRAP_VALUE_LEN = 128,	/* unwrap templates need CKA_VALUE_LEN (Luna) */
};
#define CAP_BYTES 16384
#define GCM_IV 12

static const struct {
	const char *name;
	unsigned bit;
	const char *model;	/* at most 16 bytes */
} personalities[] = {
	/* First: with others, its model gives the limit by identity. */
	{ "cap16k", P_CAP16K, "sim CloudHSM" },
	{ "iv-params", P_IV_PARAMS, "sim-iv-params" },
	{ "iv-append", P_IV_APPEND, "sim-iv-append" },
	{ "no-multipart-gcm", P_NO_MULTIPART_GCM, "sim-no-mp-gcm" },
	{ "tag-invalid", P_TAG_INVALID, "sim-tag-invalid" },
	{ "no-gcm", P_NO_GCM, "sim-no-gcm" },
	{ "cryptoki-2.20", P_CRYPTOKI_220, "sim-cryptoki220" },
	{ "unwrap-value-len", P_UNWRAP_VALUE_LEN, "sim Luna" },
};
#define NPERSONALITIES (sizeof(personalities) / sizeof(personalities[0]))

static unsigned personality_bit(const char *name)
{
	size_t i;

	for (i = 0; i < NPERSONALITIES; i++)
		if (strcmp(personalities[i].name, name) == 0)
			return personalities[i].bit;
	return 0;
}

static const char *parse_line(struct config *c, char *line)
{
	char *w[MAX_WORDS], *save = NULL, *tok, *hash;
	unsigned long long v;
	int n = 0, fn;

	hash = strchr(line, '#');
	if (hash)
		*hash = '\0';
	for (tok = strtok_r(line, " \t\r", &save); tok; tok = strtok_r(NULL, " \t\r", &save)) {
		if (n == MAX_WORDS)
			return "too many words";
		w[n++] = tok;
	}
	if (n == 0)
		return NULL;

	if (strcmp(w[0], "generation") == 0) {
		if (n != 2 || parse_ulong(w[1], &v) != 0)
			return "want: generation N";
		c->generation = v;
		c->has_generation = 1;
		return NULL;
	}
	if (strcmp(w[0], "latency_us") == 0) {
		if (n == 2 && parse_ulong(w[1], &v) == 0) {
			c->latency_us = (long long)(v > 3600000000ULL ? 3600000000ULL : v);
			return NULL;
		}
		if (n == 3 && parse_ulong(w[2], &v) == 0) {
			if (v > 3600000000ULL)
				v = 3600000000ULL;
			fn = parse_fn(w[1]);
			if (fn == -2)
				return "unknown function";
			if (fn == ALL_FUNCTIONS)
				c->latency_us = (long long)v;
			else
				c->fn_latency_us[fn] = (long long)v;
			return NULL;
		}
		return "want: latency_us [FUNCTION|*] MICROSECONDS";
	}
	if (strcmp(w[0], "fail") == 0)
		return parse_fail(c, w, n);
	if (strcmp(w[0], "hold") == 0)
		return parse_hold(c, w, n);
	if (strcmp(w[0], "max_sessions") == 0) {
		if (n != 2 || parse_ulong(w[1], &v) != 0)
			return "want: max_sessions N";
		c->max_sessions = v;
		return NULL;
	}
	if (strcmp(w[0], "close_all_sessions") == 0) {
		if (n != 1)
			return "want: close_all_sessions";
		c->close_all = 1;
		return NULL;
	}
	if (strcmp(w[0], "stats") == 0) {
		if (n != 1)
			return "want: stats";
		c->stats = 1;
		return NULL;
	}
	if (strcmp(w[0], "personality") == 0) {
		int i;
		unsigned bit;

		if (n < 2)
			return "want: personality NAME...";
		for (i = 1; i < n; i++) {
			if ((bit = personality_bit(w[i])) == 0)
				return "unknown personality (cap16k, iv-params, iv-append, no-multipart-gcm, tag-invalid, no-gcm, cryptoki-2.20, unwrap-value-len)";
			c->personality |= bit;
		}
		return NULL;
	}
	if (strcmp(w[0], "token_gone") == 0) {
		if (n == 1 || (n == 2 && strcmp(w[1], "1") == 0)) {
			c->gone = CKR_TOKEN_NOT_PRESENT;
			return NULL;
		}
		if (n == 2 && strcmp(w[1], "0") == 0) {
			c->gone = 0;
			return NULL;
		}
		if (n == 2 && parse_code(w[1], &c->gone) == 0)
			return NULL;
		return "want: token_gone [0|1|CODE]";
	}
	return "unknown directive";
}

static void parse_config(struct config *c, const char *path, char *text)
{
	char *line = text, *nl;
	int lineno = 0;
	const char *msg;

	config_init(c);
	while (line && *line) {
		nl = strchr(line, '\n');
		if (nl)
			*nl = '\0';
		lineno++;
		msg = parse_line(c, line);
		if (msg) {
			c->errors++;
			fprintf(stderr, "faultmod: %s:%d: %s\n", path, lineno, msg);
		}
		line = nl ? nl + 1 : NULL;
	}
}

/* ---------- control-file reload ---------- */

static void key_of(const struct stat *s, struct filekey *k)
{
	memset(k, 0, sizeof(*k));
	k->present = 1;
	k->dev = s->st_dev;
	k->ino = s->st_ino;
	k->size = s->st_size;
	k->mtim = s->st_mtim;
	k->ctim = s->st_ctim;
}

static int key_eq(const struct filekey *a, const struct filekey *b)
{
	if (a->present != b->present)
		return 0;
	if (!a->present)
		return 1;
	return a->dev == b->dev && a->ino == b->ino && a->size == b->size &&
	    a->mtim.tv_sec == b->mtim.tv_sec && a->mtim.tv_nsec == b->mtim.tv_nsec &&
	    a->ctim.tv_sec == b->ctim.tv_sec && a->ctim.tv_nsec == b->ctim.tv_nsec;
}

static void write_stats(void);

/* install makes c current and arms one-shot actions. Called with mu held. */
static int install(struct config *c, const struct filekey *k)
{
	CK_RV was_gone = st.cfg.gone;
	int stats_now = 0;

	if (!c->has_generation)
		c->generation = (UINT64_C(1) << 63) | ++st.auto_generation;
	st.cfg = *c;
	st.key = *k;
	st.key_valid = 1;
	st.loads++;
	st.load_errors += (unsigned long)c->errors;
	if (c->close_all && (!st.close_generation_valid || st.close_generation != c->generation)) {
		st.pending_close_all = 1;
		st.close_generation = c->generation;
		st.close_generation_valid = 1;
	}
	/* Token back: the real sessions survived, a restarted token's would not. */
	if (was_gone && !c->gone)
		st.pending_close_all = 1;
	if (c->stats && (!st.stats_generation_valid || st.stats_generation != c->generation)) {
		st.stats_generation = c->generation;
		st.stats_generation_valid = 1;
		stats_now = 1;
	}
	return stats_now;
}

static char *read_control(const char *path, struct filekey *k)
{
	FILE *f;
	struct stat s;
	char *buf;
	size_t n;

	memset(k, 0, sizeof(*k));
	f = fopen(path, "re");
	if (!f)
		return NULL;
	if (fstat(fileno(f), &s) != 0) {
		fclose(f);
		return NULL;
	}
	key_of(&s, k);
	buf = malloc(MAX_CONTROL_BYTES + 1);
	if (!buf) {
		fclose(f);
		return NULL;
	}
	n = fread(buf, 1, MAX_CONTROL_BYTES, f);
	buf[n] = '\0';
	fclose(f);
	return buf;
}

/* maybe_reload re-reads the control file when its identity, size or times changed. */
static void maybe_reload(void)
{
	const char *path;
	struct filekey cur, now;
	struct stat s;
	struct config *c;
	char *text;
	int valid, stats_now = 0;

	lock(&mu);
	path = st.control_path;
	cur = st.key;
	valid = st.key_valid;
	unlock(&mu);
	if (!path)
		return;
	memset(&now, 0, sizeof(now));
	if (stat(path, &s) == 0)
		key_of(&s, &now);
	if (valid && key_eq(&cur, &now))
		return;

	lock(&reload_mu);
	c = malloc(sizeof(*c));
	if (!c) {
		unlock(&reload_mu);
		return;
	}
	text = read_control(path, &now);
	parse_config(c, path, text ? text : (char *)"");
	lock(&mu);
	if (!(st.key_valid && key_eq(&st.key, &now)))
		stats_now = install(c, &now);
	unlock(&mu);
	if (stats_now)
		write_stats();
	unlock(&reload_mu);
	free(text);
	free(c);
}

/* ---------- stats ---------- */

/*
 * stats_mu serialises write_stats from taking the counters to the rename,
 * so that of two racing writers the later one, with the later counters,
 * wins: a test waiting for "holding 2" must not be left with the file of
 * the first hold. Taken before mu, never while mu is held.
 */
static pthread_mutex_t stats_mu = PTHREAD_MUTEX_INITIALIZER;

static void write_stats_locked(void);

static void write_stats(void)
{
	lock(&stats_mu);
	write_stats_locked();
	unlock(&stats_mu);
}

static void write_stats_locked(void)
{
	unsigned long calls[FN_COUNT], injected[FN_COUNT], loads, errs;
	uint64_t gen;
	size_t open;
	unsigned long holding, held;
	int closing;
	char *path, *tmp;
	FILE *f;
	int fd, i;

	lock(&mu);
	if (!st.stats_path) {
		unlock(&mu);
		return;
	}
	path = strdup(st.stats_path);
	memcpy(calls, st.calls, sizeof(calls));
	memcpy(injected, st.injected, sizeof(injected));
	loads = st.loads;
	errs = st.load_errors;
	gen = st.cfg.generation;
	open = st.nsessions;
	holding = st.holding;
	held = st.held;
	closing = st.closing;
	unlock(&mu);
	if (!path)
		return;
	if (asprintf(&tmp, "%s.XXXXXX", path) < 0) {
		free(path);
		return;
	}
	fd = mkstemp(tmp);
	if (fd < 0 || !(f = fdopen(fd, "w"))) {
		if (fd >= 0)
			close(fd);
		free(tmp);
		free(path);
		return;
	}
	fprintf(f, "# faultmod stats\n");
	fprintf(f, "generation %llu\n", (unsigned long long)gen);
	fprintf(f, "loads %lu\n", loads);
	fprintf(f, "load_errors %lu\n", errs);
	fprintf(f, "open_sessions %zu\n", open);
	fprintf(f, "holding %lu\n", holding);
	fprintf(f, "held %lu\n", held);
	fprintf(f, "closing %d\n", closing);
	for (i = 0; i < FN_COUNT; i++)
		if (calls[i] || injected[i])
			fprintf(f, "%s calls %lu injected %lu\n", fn_names[i], calls[i], injected[i]);
	if (fclose(f) != 0 || rename(tmp, path) != 0)
		unlink(tmp);
	free(tmp);
	free(path);
}

/* ---------- session tracking (mu held) ---------- */

static void track(CK_SESSION_HANDLE h, CK_SLOT_ID slot)
{
	if (st.nsessions == st.capsessions) {
		size_t n = st.capsessions ? 2 * st.capsessions : 16;
		struct session *s = realloc(st.sessions, n * sizeof(*s));

		if (!s)
			return;
		st.sessions = s;
		st.capsessions = n;
	}
	st.sessions[st.nsessions].h = h;
	st.sessions[st.nsessions].slot = slot;
	st.nsessions++;
}

static void untrack(CK_SESSION_HANDLE h)
{
	size_t i;

	for (i = 0; i < st.nsessions; i++) {
		if (st.sessions[i].h == h) {
			st.sessions[i] = st.sessions[--st.nsessions];
			return;
		}
	}
}

static void untrack_slot(CK_SLOT_ID slot)
{
	size_t i = 0;

	while (i < st.nsessions) {
		if (st.sessions[i].slot == slot)
			st.sessions[i] = st.sessions[--st.nsessions];
		else
			i++;
	}
}

/* ---------- the call path ---------- */

static uint64_t splitmix64(uint64_t *s)
{
	uint64_t z = (*s += UINT64_C(0x9e3779b97f4a7c15));

	z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
	z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
	return z ^ (z >> 31);
}

/* rule_matches: "*" spares the functions that set the library up or down. */
static int rule_matches(const struct rule *r, int fn)
{
	if (r->fn == fn)
		return 1;
	return r->fn == ALL_FUNCTIONS && fn != FN_C_GetFunctionList &&
	    fn != FN_C_Initialize && fn != FN_C_Finalize;
}

/* rule_fires counts the call and says whether every condition holds. */
static int rule_fires(struct rule *r)
{
	unsigned long n = ++r->calls;
	int fire = 1;

	if (r->every && n % r->every != 0)
		fire = 0;
	if (r->from && n < r->from)
		fire = 0;
	if (r->prob >= 0) {
		double u = (double)(splitmix64(&r->rng) >> 11) * (1.0 / 9007199254740992.0);

		if (!(u < r->prob))
			fire = 0;
	}
	if (r->limit && r->injected >= r->limit)
		fire = 0;
	return fire;
}

/* hold_fires counts the call and says whether the hold line applies to it. */
static int hold_fires(struct hold *h, int fn)
{
	unsigned long n;

	if (!(h->fn == fn || (h->fn == ALL_FUNCTIONS && fn != FN_C_GetFunctionList &&
	    fn != FN_C_Initialize && fn != FN_C_Finalize)))
		return 0;
	n = ++h->calls;
	if (h->every && n % h->every != 0)
		return 0;
	if (h->from && n < h->from)
		return 0;
	if (h->limit && h->held >= h->limit)
		return 0;
	return 1;
}

/* gone_applies: what still answers while the token is out of its slot. */
static int gone_applies(int fn)
{
	switch (fn) {
	case FN_C_GetFunctionList:
	case FN_C_Initialize:
	case FN_C_Finalize:
	case FN_C_GetInfo:
	case FN_C_GetSlotList:
	case FN_C_GetSlotInfo:
	case FN_C_WaitForSlotEvent:
		return 0;
	}
	return 1;
}

enum { OP_ENC = 1, OP_DEC = 2, OP_DIG = 4, OP_SIG = 8, OP_VER = 16 };

/* op_mask: the operations a failed call terminates (v2.40 base 5.8-5.12). */
static int op_mask(int fn)
{
	switch (fn) {
	case FN_C_Encrypt:
	case FN_C_EncryptUpdate:
	case FN_C_EncryptFinal:
		return OP_ENC;
	case FN_C_Decrypt:
	case FN_C_DecryptUpdate:
	case FN_C_DecryptFinal:
		return OP_DEC;
	case FN_C_Digest:
	case FN_C_DigestUpdate:
	case FN_C_DigestKey:
	case FN_C_DigestFinal:
		return OP_DIG;
	case FN_C_Sign:
	case FN_C_SignUpdate:
	case FN_C_SignFinal:
		return OP_SIG;
	case FN_C_Verify:
	case FN_C_VerifyUpdate:
	case FN_C_VerifyFinal:
		return OP_VER;
	case FN_C_DigestEncryptUpdate:
		return OP_DIG | OP_ENC;
	case FN_C_DecryptDigestUpdate:
		return OP_DEC | OP_DIG;
	case FN_C_SignEncryptUpdate:
		return OP_SIG | OP_ENC;
	case FN_C_DecryptVerifyUpdate:
		return OP_DEC | OP_VER;
	}
	return 0;
}

typedef CK_RV (*final_fn)(CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG_PTR);

/*
 * end_op drives a C_*Final to completion into a scratch buffer. A length
 * query (NULL buffer) or CKR_BUFFER_TOO_SMALL leaves the operation active;
 * any other answer ends it (v2.40 base 5.2).
 */
static void end_op(final_fn fin, CK_SESSION_HANDLE h)
{
	CK_ULONG n = 0;
	CK_BYTE_PTR buf;
	CK_RV rv;
	int i;

	if (!fin)
		return;
	rv = fin(h, NULL, &n);
	for (i = 0; rv == CKR_OK && i < 4; i++) {
		CK_ULONG size = n + 64;

		buf = calloc(1, size);
		if (!buf)
			return;
		n = size;
		rv = fin(h, buf, &n);
		memset(buf, 0, size);
		free(buf);
		if (rv != CKR_BUFFER_TOO_SMALL)
			return;
		rv = CKR_OK;
	}
}

/*
 * abort_ops ends the operations an injected failure would have ended on a
 * real token, so that the caller's next C_*Init does not meet
 * CKR_OPERATION_ACTIVE from the module underneath.
 */
static void abort_ops(CK_FUNCTION_LIST_PTR r, CK_SESSION_HANDLE h, int mask)
{
	if (mask & OP_ENC)
		end_op(r->C_EncryptFinal, h);
	if (mask & OP_DEC)
		end_op(r->C_DecryptFinal, h);
	if (mask & OP_DIG)
		end_op(r->C_DigestFinal, h);
	if (mask & OP_SIG)
		end_op(r->C_SignFinal, h);
	if ((mask & OP_VER) && r->C_VerifyFinal) {
		CK_BYTE sig[1024];

		memset(sig, 0, sizeof(sig));
		(void)r->C_VerifyFinal(h, sig, sizeof(sig));
	}
}

/* close_all_real drops every session on every slot, like a token that restarted. */
static void close_all_real(CK_FUNCTION_LIST_PTR r)
{
	CK_SLOT_ID_PTR slots;
	CK_ULONG n = 0, i;

	if (r->C_GetSlotList(CK_FALSE, NULL, &n) == CKR_OK && n > 0) {
		slots = calloc(n, sizeof(*slots));
		if (slots && r->C_GetSlotList(CK_FALSE, slots, &n) == CKR_OK)
			for (i = 0; i < n; i++)
				(void)r->C_CloseAllSessions(slots[i]);
		free(slots);
	}
	lock(&mu);
	st.nsessions = 0;
	unlock(&mu);
}

static void sleep_us(long long us)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	t.tv_sec += us / 1000000;
	t.tv_nsec += (us % 1000000) * 1000;
	if (t.tv_nsec >= 1000000000L) {
		t.tv_sec++;
		t.tv_nsec -= 1000000000L;
	}
	while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &t, NULL) == EINTR)
		;
}

/*
 * wait_hold keeps a call waiting while path exists. The stats file is
 * written when the wait starts and when it ends, so a test sees the event
 * ("holding 1") instead of guessing how long the call takes.
 */
static void wait_hold(const char *path)
{
	write_stats();
	while (access(path, F_OK) == 0)
		sleep_us(1000);
	lock(&mu);
	st.holding--;
	unlock(&mu);
	write_stats();
}

struct call {
	CK_FUNCTION_LIST_PTR real;
	int fn;
	CK_SESSION_HANDLE h;	/* 0 when the function takes no session */
	CK_RV inject;		/* 0: answer as the real module did */
	int after;		/* inject after forwarding */
	int from_rule;		/* inject came from a fail line */
	CK_RV gone;		/* token_gone code in force for this call */
	int inside;		/* counted in st.inside */
	char hold_after[HOLD_PATH_MAX];	/* answer held while this file exists */
};

/*
 * enter_real counts a call that is about to reach the real module, after
 * any close of every session that is under way; leave_real uncounts it.
 * A close (close_all_sessions, a token coming back) waits until no call is
 * inside the real module and lets none in while it runs: SoftHSM frees the
 * state of a session that C_CloseAllSessions closes, under a thread that may
 * be using it (a use-after-free, seen as crashes in C_Encrypt).
 */
static void enter_real(struct call *c)
{
	if (c->fn == FN_C_WaitForSlotEvent)
		return;	/* may block for ever, and touches no session */
	lock(&mu);
	while (st.closing)
		pthread_cond_wait(&quiet, &mu);
	st.inside++;
	c->inside = 1;
	unlock(&mu);
}

static void leave_real(struct call *c)
{
	if (!c->inside)
		return;
	lock(&mu);
	c->inside = 0;
	if (--st.inside == 0)
		pthread_cond_broadcast(&quiet);
	unlock(&mu);
}

/* close_all_quiet (mu held) runs close_all_real once no call is inside. */
static void close_all_quiet(CK_FUNCTION_LIST_PTR r)
{
	int waited = 0;

	st.closing = 1;
	while (st.inside > 0) {
		if (!waited) {
			waited = 1;
			unlock(&mu);
			write_stats();	/* "closing 1": a test can see the close wait */
			lock(&mu);
			continue;
		}
		pthread_cond_wait(&quiet, &mu);
	}
	unlock(&mu);
	close_all_real(r);
	lock(&mu);
	st.closing = 0;
	pthread_cond_broadcast(&quiet);
}

static void side_effects(struct call *c)
{
	if (!c->from_rule || !c->h)
		return;
	if (c->inject == CKR_SESSION_HANDLE_INVALID || c->inject == CKR_SESSION_CLOSED) {
		/* The token says the session is gone: make it so. */
		(void)c->real->C_CloseSession(c->h);
		lock(&mu);
		untrack(c->h);
		unlock(&mu);
		return;
	}
	if (op_mask(c->fn))
		abort_ops(c->real, c->h, op_mask(c->fn));
}

/*
 * begin runs everything that happens before a call is forwarded. It returns
 * non-zero when the call must return *out without reaching the real module.
 */
static int begin(struct call *c, int fn, CK_SESSION_HANDLE h, CK_RV *out)
{
	char hold[HOLD_PATH_MAX];
	long long lat;
	int i;

	hold[0] = '\0';
	memset(c, 0, sizeof(*c));
	c->fn = fn;
	c->h = h;
	c->real = real();
	if (!c->real) {
		*out = CKR_CRYPTOKI_NOT_INITIALIZED;
		return 1;
	}
	maybe_reload();

	lock(&mu);
	if (st.pending_close_all && st.initialized && fn != FN_C_Initialize && fn != FN_C_Finalize) {
		/* First, so that this very call already sees the emptied token. */
		st.pending_close_all = 0;
		close_all_quiet(c->real);
	}
	st.calls[fn]++;
	lat = st.cfg.fn_latency_us[fn] >= 0 ? st.cfg.fn_latency_us[fn] : st.cfg.latency_us;
	c->gone = st.cfg.gone;
	if (c->gone && gone_applies(fn)) {
		c->inject = c->gone;
	} else {
		for (i = 0; i < st.cfg.nrules; i++) {
			struct rule *r = &st.cfg.rules[i];

			if (!rule_matches(r, fn))
				continue;
			if (rule_fires(r) && !c->inject) {
				r->injected++;
				c->inject = r->rv;
				c->after = r->after;
				c->from_rule = 1;
			}
		}
		if (fn == FN_C_OpenSession && (!c->inject || c->after)) {
			if (st.cfg.max_sessions &&
			    st.nsessions + st.reserved >= st.cfg.max_sessions && !c->inject) {
				c->inject = CKR_SESSION_COUNT;
			} else {
				st.reserved++;	/* released by fm_C_OpenSession */
			}
		}
	}
	if (c->inject)
		st.injected[fn]++;
	for (i = 0; i < st.cfg.nholds; i++) {
		struct hold *hl = &st.cfg.holds[i];

		if (hold_fires(hl, fn) && !hold[0] && !c->hold_after[0]) {
			hl->held++;
			if (hl->after) {	/* counted when the wait begins, in finish */
				memcpy(c->hold_after, hl->path, sizeof(c->hold_after));
				continue;
			}
			st.holding++;
			st.held++;
			memcpy(hold, hl->path, sizeof(hold));
		}
	}
	unlock(&mu);

	if (lat > 0)
		sleep_us(lat);
	if (hold[0])
		wait_hold(hold);
	if (c->inject && !c->after) {
		c->hold_after[0] = '\0';	/* not forwarded: no answer to hold */
		enter_real(c);	/* side effects call the real module */
		side_effects(c);
		leave_real(c);
		*out = c->inject;
		return 1;
	}
	enter_real(c);
	return 0;
}

static CK_RV finish(struct call *c, CK_RV rv)
{
	if (c->hold_after[0]) {
		/* The answer waits; the call still counts as inside the module. */
		lock(&mu);
		st.holding++;
		st.held++;
		unlock(&mu);
		wait_hold(c->hold_after);
	}
	if (c->inject && c->after) {
		side_effects(c);
		rv = c->inject;
	}
	leave_real(c);
	return rv;
}

/* ---------- loading ---------- */

static char *env_dup(const char *name)
{
	const char *v = getenv(name);

	return v && *v ? strdup(v) : NULL;
}

/* read_env_locked (mu held) takes the control and stats paths from the environment. */
static void read_env_locked(void)
{
	/* Old strings are kept: a racing reader may still hold them. */
	st.control_path = env_dup("FAULTMOD_CONTROL");
	st.stats_path = env_dup("FAULTMOD_STATS");
}

static CK_RV load_target(void)
{
	CK_RV (*gfl)(CK_FUNCTION_LIST_PTR_PTR);
	CK_FUNCTION_LIST_PTR fl = NULL;
	const char *target;
	void *dl;
	CK_RV rv = CKR_OK;

	lock(&load_mu);
	if (real())
		goto out;
	target = getenv("FAULTMOD_TARGET");
	if (!target || !*target) {
		fprintf(stderr, "faultmod: FAULTMOD_TARGET is not set\n");
		rv = CKR_GENERAL_ERROR;
		goto out;
	}
	dl = dlopen(target, RTLD_NOW | RTLD_LOCAL);
	if (!dl) {
		fprintf(stderr, "faultmod: %s\n", dlerror());
		rv = CKR_GENERAL_ERROR;
		goto out;
	}
	*(void **)&gfl = dlsym(dl, "C_GetFunctionList");
	if (!gfl || gfl(&fl) != CKR_OK || !fl) {
		fprintf(stderr, "faultmod: %s: no usable C_GetFunctionList\n", target);
		dlclose(dl);
		rv = CKR_GENERAL_ERROR;
		goto out;
	}
	real_dl = dl;
	lock(&mu);
	read_env_locked();
	unlock(&mu);
	__atomic_store_n(&real_fl, fl, __ATOMIC_RELEASE);
out:
	unlock(&load_mu);
	return rv;
}

__attribute__((destructor)) static void fm_unload(void)
{
	if (real_dl)
		dlclose(real_dl);
}

/* ---------- wrappers with behaviour of their own ---------- */

static CK_RV fm_C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR ppFunctionList);

static CK_RV fm_C_Initialize(CK_VOID_PTR pInitArgs)
{
	struct call c;
	CK_RV rv;

	if (load_target() != CKR_OK)
		return CKR_GENERAL_ERROR;
	lock(&mu);
	if (!st.initialized) {
		/* A fresh start: new paths, counters and configuration. */
		read_env_locked();
		config_init(&st.cfg);
		st.key_valid = 0;
		st.pending_close_all = 0;
		st.nsessions = 0;
		memset(st.calls, 0, sizeof(st.calls));
		memset(st.injected, 0, sizeof(st.injected));
		st.loads = 0;
		st.load_errors = 0;
		st.held = 0;	/* holding counts calls still waiting: kept */
	}
	unlock(&mu);
	if (begin(&c, FN_C_Initialize, 0, &rv))
		return rv;
	rv = c.real->C_Initialize(pInitArgs);
	if (rv == CKR_OK) {
		lock(&mu);
		st.initialized = 1;
		unlock(&mu);
	}
	return finish(&c, rv);
}

static CK_RV fm_C_Finalize(CK_VOID_PTR pReserved)
{
	struct call c;
	CK_RV rv;

	if (begin(&c, FN_C_Finalize, 0, &rv))
		return rv;
	rv = c.real->C_Finalize(pReserved);
	if (rv == CKR_OK) {
		lock(&mu);
		st.initialized = 0;
		st.nsessions = 0;
		st.pending_close_all = 0;
		unlock(&mu);
		write_stats();
	}
	return finish(&c, rv);
}

static CK_RV fm_C_GetSlotList(CK_BBOOL tokenPresent, CK_SLOT_ID_PTR pSlotList, CK_ULONG_PTR pulCount)
{
	struct call c;
	CK_RV rv;

	if (begin(&c, FN_C_GetSlotList, 0, &rv))
		return rv;
	if (c.gone && tokenPresent) {
		/* Every slot is empty while the token is gone. */
		rv = c.real->C_GetSlotList(CK_FALSE, NULL, &(CK_ULONG){0});
		if (rv == CKR_OK) {
			if (!pulCount)
				rv = CKR_ARGUMENTS_BAD;
			else
				*pulCount = 0;
		}
		(void)pSlotList;
		return finish(&c, rv);
	}
	return finish(&c, c.real->C_GetSlotList(tokenPresent, pSlotList, pulCount));
}

static CK_RV fm_C_GetSlotInfo(CK_SLOT_ID slotID, CK_SLOT_INFO_PTR pInfo)
{
	struct call c;
	CK_RV rv;

	if (begin(&c, FN_C_GetSlotInfo, 0, &rv))
		return rv;
	rv = c.real->C_GetSlotInfo(slotID, pInfo);
	if (rv == CKR_OK && c.gone && pInfo)
		pInfo->flags &= ~(CK_FLAGS)CKF_TOKEN_PRESENT;
	return finish(&c, rv);
}

static CK_RV fm_C_OpenSession(CK_SLOT_ID slotID, CK_FLAGS flags, CK_VOID_PTR pApplication,
    CK_NOTIFY Notify, CK_SESSION_HANDLE_PTR phSession)
{
	struct call c;
	CK_RV rv;

	if (begin(&c, FN_C_OpenSession, 0, &rv))
		return rv;
	rv = c.real->C_OpenSession(slotID, flags, pApplication, Notify, phSession);
	lock(&mu);
	st.reserved--;
	if (rv == CKR_OK && phSession)
		track(*phSession, slotID);
	unlock(&mu);
	return finish(&c, rv);
}

static CK_RV fm_C_CloseSession(CK_SESSION_HANDLE hSession)
{
	struct call c;
	CK_RV rv;

	if (begin(&c, FN_C_CloseSession, hSession, &rv))
		return rv;
	rv = c.real->C_CloseSession(hSession);
	if (rv == CKR_OK || rv == CKR_SESSION_HANDLE_INVALID || rv == CKR_SESSION_CLOSED) {
		lock(&mu);
		untrack(hSession);
		unlock(&mu);
	}
	return finish(&c, rv);
}

static CK_RV fm_C_CloseAllSessions(CK_SLOT_ID slotID)
{
	struct call c;
	CK_RV rv;

	if (begin(&c, FN_C_CloseAllSessions, 0, &rv))
		return rv;
	rv = c.real->C_CloseAllSessions(slotID);
	if (rv == CKR_OK) {
		lock(&mu);
		untrack_slot(slotID);
		unlock(&mu);
	}
	return finish(&c, rv);
}

/* ---------- plain forwarding wrappers ---------- */

#define FWD(name, sess, params, args)						\
	static CK_RV fm_##name params						\
	{									\
		struct call c;							\
		CK_RV rv;							\
										\
		if (begin(&c, FN_##name, (sess), &rv))				\
			return rv;						\
		rv = c.real->name ? c.real->name args : CKR_FUNCTION_NOT_SUPPORTED; \
		return finish(&c, rv);						\
	}

FWD(C_GetMechanismInfo, 0,
    (CK_SLOT_ID slotID, CK_MECHANISM_TYPE type, CK_MECHANISM_INFO_PTR pInfo),
    (slotID, type, pInfo))
FWD(C_InitToken, 0,
    (CK_SLOT_ID slotID, CK_UTF8CHAR_PTR pPin, CK_ULONG ulPinLen, CK_UTF8CHAR_PTR pLabel),
    (slotID, pPin, ulPinLen, pLabel))
FWD(C_InitPIN, hSession,
    (CK_SESSION_HANDLE hSession, CK_UTF8CHAR_PTR pPin, CK_ULONG ulPinLen),
    (hSession, pPin, ulPinLen))
FWD(C_SetPIN, hSession,
    (CK_SESSION_HANDLE hSession, CK_UTF8CHAR_PTR pOldPin, CK_ULONG ulOldLen, CK_UTF8CHAR_PTR pNewPin, CK_ULONG ulNewLen),
    (hSession, pOldPin, ulOldLen, pNewPin, ulNewLen))
FWD(C_GetSessionInfo, hSession,
    (CK_SESSION_HANDLE hSession, CK_SESSION_INFO_PTR pInfo),
    (hSession, pInfo))
FWD(C_GetOperationState, hSession,
    (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pOperationState, CK_ULONG_PTR pulOperationStateLen),
    (hSession, pOperationState, pulOperationStateLen))
FWD(C_SetOperationState, hSession,
    (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pOperationState, CK_ULONG ulOperationStateLen, CK_OBJECT_HANDLE hEncryptionKey, CK_OBJECT_HANDLE hAuthenticationKey),
    (hSession, pOperationState, ulOperationStateLen, hEncryptionKey, hAuthenticationKey))
FWD(C_Login, hSession,
    (CK_SESSION_HANDLE hSession, CK_USER_TYPE userType, CK_UTF8CHAR_PTR pPin, CK_ULONG ulPinLen),
    (hSession, userType, pPin, ulPinLen))
FWD(C_Logout, hSession,
    (CK_SESSION_HANDLE hSession),
    (hSession))
FWD(C_DestroyObject, hSession,
    (CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject),
    (hSession, hObject))
FWD(C_GetObjectSize, hSession,
    (CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject, CK_ULONG_PTR pulSize),
    (hSession, hObject, pulSize))
FWD(C_GetAttributeValue, hSession,
    (CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject, CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount),
    (hSession, hObject, pTemplate, ulCount))
FWD(C_SetAttributeValue, hSession,
    (CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject, CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount),
    (hSession, hObject, pTemplate, ulCount))
FWD(C_FindObjectsInit, hSession,
    (CK_SESSION_HANDLE hSession, CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount),
    (hSession, pTemplate, ulCount))
FWD(C_FindObjects, hSession,
    (CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE_PTR phObject, CK_ULONG ulMaxObjectCount, CK_ULONG_PTR pulObjectCount),
    (hSession, phObject, ulMaxObjectCount, pulObjectCount))
FWD(C_FindObjectsFinal, hSession,
    (CK_SESSION_HANDLE hSession),
    (hSession))
FWD(C_DigestInit, hSession,
    (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism),
    (hSession, pMechanism))
FWD(C_Digest, hSession,
    (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pData, CK_ULONG ulDataLen, CK_BYTE_PTR pDigest, CK_ULONG_PTR pulDigestLen),
    (hSession, pData, ulDataLen, pDigest, pulDigestLen))
FWD(C_DigestUpdate, hSession,
    (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pPart, CK_ULONG ulPartLen),
    (hSession, pPart, ulPartLen))
FWD(C_DigestKey, hSession,
    (CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hKey),
    (hSession, hKey))
FWD(C_DigestFinal, hSession,
    (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pDigest, CK_ULONG_PTR pulDigestLen),
    (hSession, pDigest, pulDigestLen))
FWD(C_SignInit, hSession,
    (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey),
    (hSession, pMechanism, hKey))
FWD(C_Sign, hSession,
    (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pData, CK_ULONG ulDataLen, CK_BYTE_PTR pSignature, CK_ULONG_PTR pulSignatureLen),
    (hSession, pData, ulDataLen, pSignature, pulSignatureLen))
FWD(C_SignUpdate, hSession,
    (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pPart, CK_ULONG ulPartLen),
    (hSession, pPart, ulPartLen))
FWD(C_SignFinal, hSession,
    (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pSignature, CK_ULONG_PTR pulSignatureLen),
    (hSession, pSignature, pulSignatureLen))
FWD(C_SignRecoverInit, hSession,
    (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey),
    (hSession, pMechanism, hKey))
FWD(C_SignRecover, hSession,
    (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pData, CK_ULONG ulDataLen, CK_BYTE_PTR pSignature, CK_ULONG_PTR pulSignatureLen),
    (hSession, pData, ulDataLen, pSignature, pulSignatureLen))
FWD(C_VerifyInit, hSession,
    (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey),
    (hSession, pMechanism, hKey))
FWD(C_Verify, hSession,
    (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pData, CK_ULONG ulDataLen, CK_BYTE_PTR pSignature, CK_ULONG ulSignatureLen),
    (hSession, pData, ulDataLen, pSignature, ulSignatureLen))
FWD(C_VerifyUpdate, hSession,
    (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pPart, CK_ULONG ulPartLen),
    (hSession, pPart, ulPartLen))
FWD(C_VerifyFinal, hSession,
    (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pSignature, CK_ULONG ulSignatureLen),
    (hSession, pSignature, ulSignatureLen))
FWD(C_VerifyRecoverInit, hSession,
    (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey),
    (hSession, pMechanism, hKey))
FWD(C_VerifyRecover, hSession,
    (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pSignature, CK_ULONG ulSignatureLen, CK_BYTE_PTR pData, CK_ULONG_PTR pulDataLen),
    (hSession, pSignature, ulSignatureLen, pData, pulDataLen))
FWD(C_DigestEncryptUpdate, hSession,
    (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pPart, CK_ULONG ulPartLen, CK_BYTE_PTR pEncryptedPart, CK_ULONG_PTR pulEncryptedPartLen),
    (hSession, pPart, ulPartLen, pEncryptedPart, pulEncryptedPartLen))
FWD(C_DecryptDigestUpdate, hSession,
    (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pEncryptedPart, CK_ULONG ulEncryptedPartLen, CK_BYTE_PTR pPart, CK_ULONG_PTR pulPartLen),
    (hSession, pEncryptedPart, ulEncryptedPartLen, pPart, pulPartLen))
FWD(C_SignEncryptUpdate, hSession,
    (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pPart, CK_ULONG ulPartLen, CK_BYTE_PTR pEncryptedPart, CK_ULONG_PTR pulEncryptedPartLen),
    (hSession, pPart, ulPartLen, pEncryptedPart, pulEncryptedPartLen))
FWD(C_DecryptVerifyUpdate, hSession,
    (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pEncryptedPart, CK_ULONG ulEncryptedPartLen, CK_BYTE_PTR pPart, CK_ULONG_PTR pulPartLen),
    (hSession, pEncryptedPart, ulEncryptedPartLen, pPart, pulPartLen))
FWD(C_GenerateKeyPair, hSession,
    (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_ATTRIBUTE_PTR pPublicKeyTemplate, CK_ULONG ulPublicKeyAttributeCount, CK_ATTRIBUTE_PTR pPrivateKeyTemplate, CK_ULONG ulPrivateKeyAttributeCount, CK_OBJECT_HANDLE_PTR phPublicKey, CK_OBJECT_HANDLE_PTR phPrivateKey),
    (hSession, pMechanism, pPublicKeyTemplate, ulPublicKeyAttributeCount, pPrivateKeyTemplate, ulPrivateKeyAttributeCount, phPublicKey, phPrivateKey))
FWD(C_DeriveKey, hSession,
    (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hBaseKey, CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulAttributeCount, CK_OBJECT_HANDLE_PTR phKey),
    (hSession, pMechanism, hBaseKey, pTemplate, ulAttributeCount, phKey))
FWD(C_SeedRandom, hSession,
    (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pSeed, CK_ULONG ulSeedLen),
    (hSession, pSeed, ulSeedLen))
FWD(C_GenerateRandom, hSession,
    (CK_SESSION_HANDLE hSession, CK_BYTE_PTR RandomData, CK_ULONG ulRandomLen),
    (hSession, RandomData, ulRandomLen))
FWD(C_GetFunctionStatus, hSession,
    (CK_SESSION_HANDLE hSession),
    (hSession))
FWD(C_CancelFunction, hSession,
    (CK_SESSION_HANDLE hSession),
    (hSession))
FWD(C_WaitForSlotEvent, 0,
    (CK_FLAGS flags, CK_SLOT_ID_PTR pSlot, CK_VOID_PTR pRserved),
    (flags, pSlot, pRserved))

/* ---------- personalities: simulated vendor behaviour ---------- */

/* One GCM operation in progress per session, for the personalities. */
struct gcmop {
	CK_SESSION_HANDLE h;
	int used;
	int enc, dec;		/* a GCM encryption / decryption is active */
	int append;		/* IV to append at the end of the encryption */
	CK_BYTE iv[GCM_IV];
};
#define MAX_GCMOPS 512
static struct gcmop gcmops[MAX_GCMOPS];	/* guarded by mu */

static unsigned personality(void)
{
	unsigned p;

	lock(&mu);
	p = st.cfg.personality;
	unlock(&mu);
	return p;
}

/* gcmop_get (mu held) finds the state of session h, making it if create. */
static struct gcmop *gcmop_get(CK_SESSION_HANDLE h, int create)
{
	int i, free_i = -1;

	for (i = 0; i < MAX_GCMOPS; i++) {
		if (gcmops[i].used && gcmops[i].h == h)
			return &gcmops[i];
		if (!gcmops[i].used && free_i < 0)
			free_i = i;
	}
	if (!create || free_i < 0)
		return NULL;
	memset(&gcmops[free_i], 0, sizeof(gcmops[free_i]));
	gcmops[free_i].used = 1;
	gcmops[free_i].h = h;
	return &gcmops[free_i];
}

/* gcm_state copies the state of session h (all zero when none). */
static struct gcmop gcm_state(CK_SESSION_HANDLE h)
{
	struct gcmop o, *g;

	memset(&o, 0, sizeof(o));
	lock(&mu);
	g = gcmop_get(h, 0);
	if (g)
		o = *g;
	unlock(&mu);
	return o;
}

static void gcm_set(CK_SESSION_HANDLE h, int enc, int dec, int append, const CK_BYTE *iv)
{
	struct gcmop *g;

	lock(&mu);
	g = gcmop_get(h, enc || dec);
	if (g) {
		if (enc >= 0)
			g->enc = enc;
		if (dec >= 0)
			g->dec = dec;
		if (append >= 0)
			g->append = append;
		if (iv)
			memcpy(g->iv, iv, GCM_IV);
		if (!g->enc && !g->dec)
			g->used = 0;
	}
	unlock(&mu);
}

static int is_kw(CK_MECHANISM_TYPE m)
{
	return m == CKM_AES_KEY_WRAP || m == CKM_AES_KEY_WRAP_PAD || m == 0x210B;
}

static void pad_copy(CK_UTF8CHAR *dst, size_t n, const char *src)
{
	size_t l = strlen(src);

	memset(dst, ' ', n);
	memcpy(dst, src, l < n ? l : n);
}

static CK_RV fm_C_GetTokenInfo(CK_SLOT_ID slotID, CK_TOKEN_INFO_PTR pInfo)
{
	struct call c;
	CK_RV rv;
	unsigned p;
	size_t i;

	if (begin(&c, FN_C_GetTokenInfo, 0, &rv))
		return rv;
	rv = c.real->C_GetTokenInfo(slotID, pInfo);
	p = personality();
	if (rv == CKR_OK && pInfo && p) {
		for (i = 0; i < NPERSONALITIES; i++) {
			if (p & personalities[i].bit) {
				pad_copy(pInfo->manufacturerID, sizeof(pInfo->manufacturerID), "hsmkeys faultmod");
				pad_copy(pInfo->model, sizeof(pInfo->model), personalities[i].model);
				break;
			}
		}
	}
	return finish(&c, rv);
}

static CK_RV fm_C_GetMechanismList(CK_SLOT_ID slotID, CK_MECHANISM_TYPE_PTR pMechanismList, CK_ULONG_PTR pulCount)
{
	struct call c;
	CK_RV rv;
	CK_ULONG n = 0, i, k;
	CK_MECHANISM_TYPE_PTR all;

	if (begin(&c, FN_C_GetMechanismList, 0, &rv))
		return rv;
	if (!(personality() & P_NO_GCM) || !pulCount)
		return finish(&c, c.real->C_GetMechanismList(slotID, pMechanismList, pulCount));
	rv = c.real->C_GetMechanismList(slotID, NULL, &n);
	if (rv != CKR_OK)
		return finish(&c, rv);
	all = calloc(n + 1, sizeof(*all));
	if (!all)
		return finish(&c, CKR_HOST_MEMORY);
	rv = c.real->C_GetMechanismList(slotID, all, &n);
	if (rv == CKR_OK) {
		for (i = 0, k = 0; i < n; i++)
			if (all[i] != CKM_AES_GCM && !is_kw(all[i]))
				all[k++] = all[i];
		if (pMechanismList && *pulCount < k)
			rv = CKR_BUFFER_TOO_SMALL;
		else if (pMechanismList)
			memcpy(pMechanismList, all, k * sizeof(*all));
		*pulCount = k;
	}
	free(all);
	return finish(&c, rv);
}

static CK_RV fm_C_EncryptInit(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey)
{
	struct call c;
	CK_RV rv;
	unsigned p;
	CK_GCM_PARAMS gp, *caller;
	CK_MECHANISM m;
	CK_BYTE iv[GCM_IV];
	int gcm = pMechanism && pMechanism->mechanism == CKM_AES_GCM;

	if (begin(&c, FN_C_EncryptInit, hSession, &rv))
		return rv;
	p = personality();
	if (gcm && (p & P_NO_GCM))
		return finish(&c, CKR_MECHANISM_INVALID);
	if (!gcm || !(p & (P_IV_PARAMS | P_IV_APPEND))) {
		rv = c.real->C_EncryptInit(hSession, pMechanism, hKey);
		if (rv == CKR_OK)
			gcm_set(hSession, gcm, -1, 0, NULL);
		return finish(&c, rv);
	}
	/* The token makes the IV and ignores the caller's. */
	if (!pMechanism->pParameter || pMechanism->ulParameterLen != sizeof(CK_GCM_PARAMS))
		return finish(&c, CKR_MECHANISM_PARAM_INVALID);
	caller = pMechanism->pParameter;
	if ((p & P_IV_PARAMS) && (!caller->pIv || caller->ulIvLen != GCM_IV))
		return finish(&c, CKR_MECHANISM_PARAM_INVALID);
	if (getrandom(iv, sizeof(iv), 0) != (ssize_t)sizeof(iv))
		return finish(&c, CKR_DEVICE_ERROR);
	gp = *caller;
	gp.pIv = iv;
	gp.ulIvLen = GCM_IV;
	gp.ulIvBits = GCM_IV * 8;
	m = *pMechanism;
	m.pParameter = &gp;
	rv = c.real->C_EncryptInit(hSession, &m, hKey);
	if (rv == CKR_OK) {
		if (p & P_IV_PARAMS)
			memcpy(caller->pIv, iv, GCM_IV);
		gcm_set(hSession, 1, -1, !(p & P_IV_PARAMS), iv);
	}
	return finish(&c, rv);
}

/* encrypt_append runs a C_Encrypt or C_EncryptFinal whose output gets the IV appended. */
static CK_RV encrypt_append(CK_SESSION_HANDLE h, const struct gcmop *o, CK_BYTE_PTR in, CK_ULONG inLen,
    CK_BYTE_PTR out, CK_ULONG_PTR outLen, int final, CK_FUNCTION_LIST_PTR r)
{
	CK_ULONG need = 0, got;
	CK_RV rv;

	if (!outLen)
		return CKR_ARGUMENTS_BAD;
	rv = final ? r->C_EncryptFinal(h, NULL, &need) : r->C_Encrypt(h, in, inLen, NULL, &need);
	if (rv != CKR_OK)
		return rv;
	if (!out) {
		*outLen = need + GCM_IV;
		return CKR_OK;
	}
	if (*outLen < need + GCM_IV) {
		*outLen = need + GCM_IV;
		return CKR_BUFFER_TOO_SMALL;
	}
	got = *outLen - GCM_IV;
	rv = final ? r->C_EncryptFinal(h, out, &got) : r->C_Encrypt(h, in, inLen, out, &got);
	if (rv == CKR_OK) {
		memcpy(out + got, o->iv, GCM_IV);
		*outLen = got + GCM_IV;
	}
	return rv;
}

static int done_op(CK_RV rv, CK_BYTE_PTR out)
{
	return rv != CKR_BUFFER_TOO_SMALL && !(rv == CKR_OK && !out);
}

static CK_RV fm_C_Encrypt(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pData, CK_ULONG ulDataLen, CK_BYTE_PTR pEncryptedData, CK_ULONG_PTR pulEncryptedDataLen)
{
	struct call c;
	CK_RV rv;
	struct gcmop o = gcm_state(hSession);

	if (begin(&c, FN_C_Encrypt, hSession, &rv))
		return rv;
	if ((personality() & P_CAP16K) && ulDataLen > CAP_BYTES) {
		end_op(c.real->C_EncryptFinal, hSession);
		gcm_set(hSession, 0, -1, 0, NULL);
		return finish(&c, CKR_DATA_LEN_RANGE);
	}
	if (o.enc && o.append)
		rv = encrypt_append(hSession, &o, pData, ulDataLen, pEncryptedData, pulEncryptedDataLen, 0, c.real);
	else
		rv = c.real->C_Encrypt(hSession, pData, ulDataLen, pEncryptedData, pulEncryptedDataLen);
	if (done_op(rv, pEncryptedData))
		gcm_set(hSession, 0, -1, 0, NULL);
	return finish(&c, rv);
}

static CK_RV fm_C_EncryptUpdate(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pPart, CK_ULONG ulPartLen, CK_BYTE_PTR pEncryptedPart, CK_ULONG_PTR pulEncryptedPartLen)
{
	struct call c;
	CK_RV rv;
	unsigned p;
	struct gcmop o = gcm_state(hSession);

	if (begin(&c, FN_C_EncryptUpdate, hSession, &rv))
		return rv;
	p = personality();
	if (((p & P_CAP16K) && ulPartLen > CAP_BYTES) || (o.enc && (p & P_NO_MULTIPART_GCM))) {
		end_op(c.real->C_EncryptFinal, hSession);
		gcm_set(hSession, 0, -1, 0, NULL);
		return finish(&c, (p & P_CAP16K) && ulPartLen > CAP_BYTES ? CKR_DATA_LEN_RANGE : CKR_FUNCTION_NOT_SUPPORTED);
	}
	rv = c.real->C_EncryptUpdate(hSession, pPart, ulPartLen, pEncryptedPart, pulEncryptedPartLen);
	if (rv != CKR_OK && rv != CKR_BUFFER_TOO_SMALL)
		gcm_set(hSession, 0, -1, 0, NULL);
	return finish(&c, rv);
}

static CK_RV fm_C_EncryptFinal(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pLastEncryptedPart, CK_ULONG_PTR pulLastEncryptedPartLen)
{
	struct call c;
	CK_RV rv;
	struct gcmop o = gcm_state(hSession);

	if (begin(&c, FN_C_EncryptFinal, hSession, &rv))
		return rv;
	if (o.enc && o.append)
		rv = encrypt_append(hSession, &o, NULL, 0, pLastEncryptedPart, pulLastEncryptedPartLen, 1, c.real);
	else
		rv = c.real->C_EncryptFinal(hSession, pLastEncryptedPart, pulLastEncryptedPartLen);
	if (done_op(rv, pLastEncryptedPart))
		gcm_set(hSession, 0, -1, 0, NULL);
	return finish(&c, rv);
}

static CK_RV fm_C_DecryptInit(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey)
{
	struct call c;
	CK_RV rv;
	int gcm = pMechanism && pMechanism->mechanism == CKM_AES_GCM;

	if (begin(&c, FN_C_DecryptInit, hSession, &rv))
		return rv;
	if (gcm && (personality() & P_NO_GCM))
		return finish(&c, CKR_MECHANISM_INVALID);
	rv = c.real->C_DecryptInit(hSession, pMechanism, hKey);
	if (rv == CKR_OK)
		gcm_set(hSession, -1, gcm, -1, NULL);
	return finish(&c, rv);
}

/* tag_code: what a bad tag answers under tag-invalid (SoftHSM says CKR_GENERAL_ERROR). */
static CK_RV tag_code(const struct gcmop *o, CK_RV rv)
{
	if (o->dec && rv == CKR_GENERAL_ERROR && (personality() & P_TAG_INVALID))
		return CKR_ENCRYPTED_DATA_INVALID;
	return rv;
}

static CK_RV fm_C_Decrypt(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pEncryptedData, CK_ULONG ulEncryptedDataLen, CK_BYTE_PTR pData, CK_ULONG_PTR pulDataLen)
{
	struct call c;
	CK_RV rv;
	struct gcmop o = gcm_state(hSession);

	if (begin(&c, FN_C_Decrypt, hSession, &rv))
		return rv;
	if ((personality() & P_CAP16K) && ulEncryptedDataLen > CAP_BYTES) {
		end_op(c.real->C_DecryptFinal, hSession);
		gcm_set(hSession, -1, 0, -1, NULL);
		return finish(&c, CKR_ENCRYPTED_DATA_LEN_RANGE);
	}
	rv = tag_code(&o, c.real->C_Decrypt(hSession, pEncryptedData, ulEncryptedDataLen, pData, pulDataLen));
	if (done_op(rv, pData))
		gcm_set(hSession, -1, 0, -1, NULL);
	return finish(&c, rv);
}

static CK_RV fm_C_DecryptUpdate(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pEncryptedPart, CK_ULONG ulEncryptedPartLen, CK_BYTE_PTR pPart, CK_ULONG_PTR pulPartLen)
{
	struct call c;
	CK_RV rv;
	unsigned p;
	struct gcmop o = gcm_state(hSession);

	if (begin(&c, FN_C_DecryptUpdate, hSession, &rv))
		return rv;
	p = personality();
	if (((p & P_CAP16K) && ulEncryptedPartLen > CAP_BYTES) || (o.dec && (p & P_NO_MULTIPART_GCM))) {
		end_op(c.real->C_DecryptFinal, hSession);
		gcm_set(hSession, -1, 0, -1, NULL);
		return finish(&c, (p & P_CAP16K) && ulEncryptedPartLen > CAP_BYTES ? CKR_ENCRYPTED_DATA_LEN_RANGE : CKR_FUNCTION_NOT_SUPPORTED);
	}
	rv = c.real->C_DecryptUpdate(hSession, pEncryptedPart, ulEncryptedPartLen, pPart, pulPartLen);
	if (rv != CKR_OK && rv != CKR_BUFFER_TOO_SMALL)
		gcm_set(hSession, -1, 0, -1, NULL);
	return finish(&c, rv);
}

static CK_RV fm_C_DecryptFinal(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pLastPart, CK_ULONG_PTR pulLastPartLen)
{
	struct call c;
	CK_RV rv;
	struct gcmop o = gcm_state(hSession);

	if (begin(&c, FN_C_DecryptFinal, hSession, &rv))
		return rv;
	rv = tag_code(&o, c.real->C_DecryptFinal(hSession, pLastPart, pulLastPartLen));
	if (done_op(rv, pLastPart))
		gcm_set(hSession, -1, 0, -1, NULL);
	return finish(&c, rv);
}

static CK_RV fm_C_WrapKey(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hWrappingKey, CK_OBJECT_HANDLE hKey, CK_BYTE_PTR pWrappedKey, CK_ULONG_PTR pulWrappedKeyLen)
{
	struct call c;
	CK_RV rv;

	if (begin(&c, FN_C_WrapKey, hSession, &rv))
		return rv;
	if (pMechanism && is_kw(pMechanism->mechanism) && (personality() & P_NO_GCM))
		return finish(&c, CKR_MECHANISM_INVALID);
	return finish(&c, c.real->C_WrapKey(hSession, pMechanism, hWrappingKey, hKey, pWrappedKey, pulWrappedKeyLen));
}

static CK_RV fm_C_UnwrapKey(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hUnwrappingKey, CK_BYTE_PTR pWrappedKey, CK_ULONG ulWrappedKeyLen, CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulAttributeCount, CK_OBJECT_HANDLE_PTR phKey)
{
	struct call c;
	CK_RV rv;
	unsigned p;

	if (begin(&c, FN_C_UnwrapKey, hSession, &rv))
		return rv;
	p = personality();
	if (pMechanism && is_kw(pMechanism->mechanism) && (p & P_NO_GCM))
		return finish(&c, CKR_MECHANISM_INVALID);
	if ((p & P_UNWRAP_VALUE_LEN) && pTemplate) {
		/* Wants CKA_VALUE_LEN, which SoftHSM refuses: checked, then dropped. */
		CK_ATTRIBUTE_PTR t = calloc(ulAttributeCount + 1, sizeof(*t));
		CK_ULONG i, k = 0;
		int has = 0;

		if (!t)
			return finish(&c, CKR_HOST_MEMORY);
		for (i = 0; i < ulAttributeCount; i++) {
			if (pTemplate[i].type == CKA_VALUE_LEN)
				has = 1;
			else
				t[k++] = pTemplate[i];
		}
		if (!has)
			rv = CKR_TEMPLATE_INCOMPLETE;
		else
			rv = c.real->C_UnwrapKey(hSession, pMechanism, hUnwrappingKey, pWrappedKey, ulWrappedKeyLen, t, k, phKey);
		free(t);
	} else {
		rv = c.real->C_UnwrapKey(hSession, pMechanism, hUnwrappingKey, pWrappedKey, ulWrappedKeyLen, pTemplate, ulAttributeCount, phKey);
	}
	/* A token that names a failed integrity check as the standard says. */
	if (rv == CKR_GENERAL_ERROR && (p & P_TAG_INVALID))
		rv = CKR_WRAPPED_KEY_INVALID;
	return finish(&c, rv);
}


/* ---------- personality cryptoki-2.20 ---------- */

/*
 * refuses_220 reports whether a template names an attribute a Cryptoki
 * 2.20 token does not know: CKA_COPYABLE (new in v2.40) and
 * CKA_WRAP_WITH_TRUSTED (v2.20 amendment 3, which plain 2.20 tokens lack).
 */
static int refuses_220(CK_ATTRIBUTE_PTR t, CK_ULONG n)
{
	CK_ULONG i;

	if (!(personality() & P_CRYPTOKI_220) || !t)
		return 0;
	for (i = 0; i < n; i++)
		if (t[i].type == CKA_COPYABLE || t[i].type == CKA_WRAP_WITH_TRUSTED)
			return 1;
	return 0;
}

static CK_RV fm_C_GetInfo(CK_INFO_PTR pInfo)
{
	struct call c;
	CK_RV rv;

	if (begin(&c, FN_C_GetInfo, 0, &rv))
		return rv;
	rv = c.real->C_GetInfo(pInfo);
	if (rv == CKR_OK && pInfo && (personality() & P_CRYPTOKI_220)) {
		pInfo->cryptokiVersion.major = 2;
		pInfo->cryptokiVersion.minor = 20;
	}
	return finish(&c, rv);
}

static CK_RV fm_C_CreateObject(CK_SESSION_HANDLE hSession, CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount, CK_OBJECT_HANDLE_PTR phObject)
{
	struct call c;
	CK_RV rv;

	if (begin(&c, FN_C_CreateObject, hSession, &rv))
		return rv;
	if (refuses_220(pTemplate, ulCount))
		return finish(&c, CKR_ATTRIBUTE_TYPE_INVALID);
	return finish(&c, c.real->C_CreateObject(hSession, pTemplate, ulCount, phObject));
}

static CK_RV fm_C_CopyObject(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject, CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount, CK_OBJECT_HANDLE_PTR phNewObject)
{
	struct call c;
	CK_RV rv;

	if (begin(&c, FN_C_CopyObject, hSession, &rv))
		return rv;
	if (refuses_220(pTemplate, ulCount))
		return finish(&c, CKR_ATTRIBUTE_TYPE_INVALID);
	return finish(&c, c.real->C_CopyObject(hSession, hObject, pTemplate, ulCount, phNewObject));
}

static CK_RV fm_C_GenerateKey(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount, CK_OBJECT_HANDLE_PTR phKey)
{
	struct call c;
	CK_RV rv;

	if (begin(&c, FN_C_GenerateKey, hSession, &rv))
		return rv;
	if (refuses_220(pTemplate, ulCount))
		return finish(&c, CKR_ATTRIBUTE_TYPE_INVALID);
	return finish(&c, c.real->C_GenerateKey(hSession, pMechanism, pTemplate, ulCount, phKey));
}

/* ---------- the function list ---------- */

/* Positional, generated from pkcs11f.h: a missing wrapper fails to compile. */
static CK_FUNCTION_LIST fm_list = {
	{ 2, 40 },
#define CK_PKCS11_FUNCTION_INFO(name) fm_##name,
#include "include/pkcs11f.h"
#undef CK_PKCS11_FUNCTION_INFO
};

/* C_GetFunctionList is the only exported symbol a PKCS#11 loader needs. */
CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR ppFunctionList)
{
	if (!ppFunctionList)
		return CKR_ARGUMENTS_BAD;
	/* A missing target is reported by C_Initialize. */
	(void)load_target();
	*ppFunctionList = &fm_list;
	return CKR_OK;
}

static CK_RV fm_C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR ppFunctionList)
{
	return C_GetFunctionList(ppFunctionList);
}
