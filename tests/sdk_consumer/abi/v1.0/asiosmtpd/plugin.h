// SPDX-License-Identifier: Apache-2.0
/* The ABI header keeps its hand-aligned layout (multi-line comments after macros, tables). */
/* clang-format off */
/*
 * asiosmtpd/plugin.h - the plugin C ABI of asiosmtpd, major version 1.
 *
 * The only header a plugin includes. Plain C99: fixed-width integers, pointer+length strings,
 * opaque handles, function pointers. No C++ types, no exceptions, no allocator ownership
 * crosses this boundary. A plugin never links against the host: the host hands it a table of
 * functions (asiosmtpd_host_api) when it creates an instance.
 *
 * Compatibility rules (ABI 1.x):
 *  - Every struct that crosses the boundary starts with `uint32_t struct_size`. Fields are only
 *    ever appended, in blocks marked "ABI 1.N and later". The reader checks the writer's size
 *    (ASIOSMTPD_HAS) before reading a field added after 1.0.
 *  - Constants are #defines of fixed-width integers, never C enum types.
 *  - A function whose meaning must change gets a new `_v2` name; nothing changes signature.
 *
 * Threading rules (normative):
 *  T1 create() and destroy() run on the host's control thread, never concurrently with a hook
 *     of the same instance.
 *  T2 Hooks of one session run one at a time, in order, but consecutive hooks may run on
 *     different OS threads: never keep per-session state in thread_local storage.
 *  T3 Hooks of different sessions run concurrently on the host's worker threads when the
 *     plugin declares ASIOSMTPD_PF_THREAD_SAFE; otherwise the host serialises every hook call
 *     into that instance with a lock.
 *  T4 Hooks must not block. A hook that must wait (DNS, an upstream server, a disk fsync on a
 *     slow device) calls suspend(), returns ASIOSMTPD_PENDING and later calls complete() from
 *     any thread. A hook that does not complete within the instance's timeout costs its session
 *     a "451 4.3.0 Error: internal" reply; the server goes on.
 *  T5 A asiosmtpd_call pointer is valid only during the hook call that received it. Functions
 *     that may be called from any thread at any time: complete(), log().
 *  T6 The host never calls back into a plugin from inside a host API function.
 *  T7 destroy() must stop and join every thread the plugin started; the library may be
 *     unloaded right after it returns.
 */
#ifndef ASIOSMTPD_PLUGIN_H
#define ASIOSMTPD_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#define ASIOSMTPD_ABI_MAJOR 1u /* a breaking change gets a new entry symbol name */
#define ASIOSMTPD_ABI_MINOR 0u /* additive changes only */

#if defined(_WIN32)
#define ASIOSMTPD_EXPORT __declspec(dllexport)
#else
#define ASIOSMTPD_EXPORT __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------------------------
 * Vocabulary
 * ---------------------------------------------------------------------------------------- */

/* A string: pointer and length, not necessarily NUL-terminated. Host-to-plugin strings are
 * borrowed: valid until the hook (or create()) that received them returns, unless a function
 * says otherwise. `data` is never NULL in strings the host gives out (size may be 0). */
typedef struct asiosmtpd_str {
    const char *data;
    size_t size;
} asiosmtpd_str;

/* Result of host API functions. */
typedef int32_t asiosmtpd_status;
#define ASIOSMTPD_OK 0
#define ASIOSMTPD_E_INVALID (-1)     /* bad argument (NULL, malformed reply, out of range) */
#define ASIOSMTPD_E_UNSUPPORTED (-2) /* unknown hook id, flag or feature */
#define ASIOSMTPD_E_STATE (-3)       /* not allowed in this hook or phase */
#define ASIOSMTPD_E_GONE (-4)        /* session closed, hook timed out, token stale or reused */
#define ASIOSMTPD_E_CONFLICT (-5)    /* verb already registered by another plugin or built in */
#define ASIOSMTPD_E_FROZEN (-6)      /* registration outside create() */

/* What a hook returns. */
typedef int32_t asiosmtpd_verdict;
#define ASIOSMTPD_CONTINUE 0       /* no opinion: the next plugin runs, then the host default */
#define ASIOSMTPD_ACCEPT 1         /* accept; stops the chain. Reply: set_reply() or default */
#define ASIOSMTPD_REJECT 2         /* permanent failure (5xx); stops the chain */
#define ASIOSMTPD_TEMPFAIL 3       /* temporary failure (4xx); stops the chain */
#define ASIOSMTPD_REJECT_CLOSE 4   /* 5xx reply, then the host closes the connection */
#define ASIOSMTPD_TEMPFAIL_CLOSE 5 /* 4xx reply (default 421), then close */
#define ASIOSMTPD_PENDING 6        /* suspended: the verdict comes later through complete() */

/* Hook identifiers. The hook's `args` pointer points to the struct named here. */
typedef int32_t asiosmtpd_hook_id;
#define ASIOSMTPD_HOOK_CONNECT 1       /* before the 220 greeting     args: asiosmtpd_connect_args */
#define ASIOSMTPD_HOOK_HELO 2          /* HELO hostname               args: asiosmtpd_helo_args */
#define ASIOSMTPD_HOOK_EHLO 3          /* EHLO/LHLO hostname          args: asiosmtpd_helo_args */
#define ASIOSMTPD_HOOK_MAIL 4          /* MAIL FROM, after syntax     args: asiosmtpd_address_args */
#define ASIOSMTPD_HOOK_RCPT 5          /* RCPT TO, after syntax       args: asiosmtpd_address_args */
#define ASIOSMTPD_HOOK_DATA 6          /* whole message received      args: asiosmtpd_data_args */
#define ASIOSMTPD_HOOK_RSET 7          /* RSET, envelope already reset args: NULL */
#define ASIOSMTPD_HOOK_NOOP 8          /* NOOP [arg]                  args: asiosmtpd_command_args */
#define ASIOSMTPD_HOOK_QUIT 9          /* QUIT; the host closes after args: NULL */
#define ASIOSMTPD_HOOK_VRFY 10         /* VRFY address                args: asiosmtpd_address_args */
#define ASIOSMTPD_HOOK_UNKNOWN 11      /* a verb nobody knows         args: asiosmtpd_command_args */
#define ASIOSMTPD_HOOK_SESSION_CLOSE 12 /* notification, always once   args: NULL; verdict ignored */

/* Verdicts and replies per hook, when no plugin sets a reply (aiosmtpd's defaults):
 *   CONNECT  CONTINUE/ACCEPT: the 220 greeting; REJECT: 554 and only QUIT served;
 *            TEMPFAIL*: 421 and close.
 *   HELO     250 <hostname>           EHLO  the keyword lines      MAIL/RCPT 250 OK
 *   DATA     250 OK                   RSET  250 OK                 NOOP 250 OK
 *   QUIT     221 Bye                  VRFY  252 Cannot VRFY user, but will accept ...
 *   UNKNOWN  500 Error: command "X" not recognized (and the unknown-command budget is used)
 * A REJECT/TEMPFAIL without a reply gets "550 5.7.1 Rejected" / "451 4.7.1 Try again later".
 * ACCEPT and CONTINUE apply the host's state change (HELO name stored, sender stored,
 * recipient added, message taken); REJECT and TEMPFAIL do not. For DATA, the message counts as
 * delivered only when some plugin ACCEPTs it or every plugin CONTINUEs. */

/* ------------------------------------------------------------------------------------------
 * Opaque handles, all owned by the host
 * ---------------------------------------------------------------------------------------- */
typedef struct asiosmtpd_ctx asiosmtpd_ctx;             /* one per plugin instance; lives as long */
typedef struct asiosmtpd_registrar asiosmtpd_registrar; /* valid only during create() */
typedef struct asiosmtpd_call asiosmtpd_call;           /* valid only during one hook call */
typedef struct asiosmtpd_cfg asiosmtpd_cfg;             /* config node; valid only during create() */
typedef uint64_t asiosmtpd_token;                       /* a suspended hook call; 0 = none */

/* True when the struct at p, whose writer stored its size in struct_size, holds field f. */
#ifdef __cplusplus
#define ASIOSMTPD_HAS(p, T, f) \
    ((p)->struct_size >= offsetof(T, f) + sizeof(static_cast<const T *>(nullptr)->f))
#else
#define ASIOSMTPD_HAS(p, T, f) ((p)->struct_size >= offsetof(T, f) + sizeof(((const T *)0)->f))
#endif

/* ------------------------------------------------------------------------------------------
 * Hook arguments: host-allocated, valid until the hook returns (for a suspended call: until
 * complete() is called for its token).
 * ---------------------------------------------------------------------------------------- */
typedef struct asiosmtpd_connect_args {
    uint32_t struct_size;
    asiosmtpd_str peer_address; /* "127.0.0.1", "::1" */
    uint16_t peer_port;
    asiosmtpd_str local_address;
    uint16_t local_port;
} asiosmtpd_connect_args;

typedef struct asiosmtpd_helo_args {
    uint32_t struct_size;
    asiosmtpd_str hostname; /* the whole argument, as the client sent it (spaces included) */
} asiosmtpd_helo_args;

typedef struct asiosmtpd_address_args {
    uint32_t struct_size;
    asiosmtpd_str address;        /* normalised; "<>" for the null reverse path (as aiosmtpd) */
    const asiosmtpd_str *params;  /* MAIL: upper-cased ESMTP parameters ("SIZE=100"); else none */
    size_t param_count;
} asiosmtpd_address_args;

#define ASIOSMTPD_DATA_DOT_UNSTUFFED 0x1u /* RFC 5321 4.5.2 transparency removed */
#define ASIOSMTPD_DATA_CRLF 0x2u          /* lines end in CRLF as received; bare CR/LF kept */
typedef struct asiosmtpd_data_args {
    uint32_t struct_size;
    const uint8_t *content; /* the message as aiosmtpd's envelope.original_content */
    size_t size;
    uint32_t flags;         /* ASIOSMTPD_DATA_* */
} asiosmtpd_data_args;

typedef struct asiosmtpd_command_args {
    uint32_t struct_size;
    asiosmtpd_str verb;     /* upper-cased */
    asiosmtpd_str argument; /* stripped; empty when absent */
    int32_t has_argument;   /* 0 when nothing followed the verb (aiosmtpd's arg=None) */
} asiosmtpd_command_args;

/* A hook. `instance` is what create() stored in *out_instance. */
typedef asiosmtpd_verdict (*asiosmtpd_hook_fn)(void *instance, asiosmtpd_call *call,
                                                const void *args);

/* ------------------------------------------------------------------------------------------
 * Registration descriptors (used during create() only; the host copies what it keeps)
 * ---------------------------------------------------------------------------------------- */

/* A new SMTP command, aiosmtpd's smtp_<VERB>. The verb takes part in the command-line limit,
 * command_call_limit, require_starttls and HELP exactly like a built-in verb. */
#define ASIOSMTPD_CMD_NEEDS_HELO 0x1u /* "503 Error: send HELO first" until HELO/EHLO */
typedef struct asiosmtpd_command_desc {
    uint32_t struct_size;
    asiosmtpd_str verb;    /* [A-Z0-9-]+, matched case-insensitively; not a built-in verb */
    asiosmtpd_str help;    /* "PING [text]": listed by HELP, shown by HELP <verb>; may be empty */
    uint32_t flags;        /* ASIOSMTPD_CMD_* */
    asiosmtpd_hook_fn handler; /* args: asiosmtpd_command_args; default reply "250 OK" */
} asiosmtpd_command_desc;

/* ------------------------------------------------------------------------------------------
 * Read-only views. The caller sets struct_size to its capacity; the host fills what both
 * know and sets struct_size to what it wrote.
 * ---------------------------------------------------------------------------------------- */
typedef struct asiosmtpd_session_info {
    uint32_t struct_size;
    uint64_t session_id;
    asiosmtpd_str peer_address;
    uint16_t peer_port;
    asiosmtpd_str helo_name; /* empty before HELO/EHLO */
    int32_t extended_smtp;   /* 1 after EHLO/LHLO */
    int32_t tls_active;
    int32_t authenticated;
} asiosmtpd_session_info;

typedef struct asiosmtpd_txn_info {
    uint32_t struct_size;
    asiosmtpd_str mail_from; /* empty before MAIL; "<>" for the null sender */
    size_t mail_param_count;
    size_t rcpt_count;
} asiosmtpd_txn_info;

#define ASIOSMTPD_SCOPE_SESSION 1 /* freed when the session ends */
#define ASIOSMTPD_SCOPE_TXN 2     /* freed when the transaction ends (RSET, HELO, end of DATA) */

#define ASIOSMTPD_LOG_DEBUG 1
#define ASIOSMTPD_LOG_INFO 2
#define ASIOSMTPD_LOG_WARN 3
#define ASIOSMTPD_LOG_ERROR 4

#define ASIOSMTPD_CFG_NULL 0
#define ASIOSMTPD_CFG_SCALAR 1
#define ASIOSMTPD_CFG_SEQUENCE 2
#define ASIOSMTPD_CFG_MAP 3

/* ------------------------------------------------------------------------------------------
 * The host API: an append-only function table. The host never leaves a member NULL.
 * ---------------------------------------------------------------------------------------- */
typedef struct asiosmtpd_host_api {
    uint32_t struct_size;
    uint32_t abi_major, abi_minor;
    asiosmtpd_str host_version; /* "0.1.0"; informative */

    /* -- Registration: only inside create(); afterwards ASIOSMTPD_E_FROZEN. -- */

    /* Add fn to the chain of `hook`. Chains run in config order. Returns ASIOSMTPD_OK,
     * ASIOSMTPD_E_UNSUPPORTED (unknown hook id: a plugin may degrade), ASIOSMTPD_E_INVALID. */
    asiosmtpd_status (*register_hook)(asiosmtpd_registrar *reg, asiosmtpd_hook_id hook,
                                      asiosmtpd_hook_fn fn);
    /* Add a command. ASIOSMTPD_E_CONFLICT if the verb is built in or taken; E_INVALID on a bad
     * verb. The descriptor and its strings are copied. */
    asiosmtpd_status (*register_command)(asiosmtpd_registrar *reg,
                                         const asiosmtpd_command_desc *desc);
    /* Add an EHLO keyword line (e.g. "XCLIENT NAME ADDR"), sent after the built-in keywords
     * and before "250 HELP" (aiosmtpd's ehlo_hook). Copied. E_INVALID on CR/LF or > 500 bytes. */
    asiosmtpd_status (*register_ehlo_keyword)(asiosmtpd_registrar *reg, asiosmtpd_str line);

    /* -- Configuration: this instance's `config:` subtree; nodes valid during create(). -- */
    const asiosmtpd_cfg *(*cfg_root)(asiosmtpd_registrar *reg); /* never NULL (NULL kind if absent) */
    int32_t (*cfg_kind)(const asiosmtpd_cfg *node);            /* ASIOSMTPD_CFG_* */
    asiosmtpd_str (*cfg_scalar)(const asiosmtpd_cfg *node);    /* raw text; empty unless scalar */
    size_t (*cfg_size)(const asiosmtpd_cfg *node);             /* entries of a sequence or map */
    const asiosmtpd_cfg *(*cfg_at)(const asiosmtpd_cfg *node, size_t index); /* NULL if out of range */
    asiosmtpd_str (*cfg_key_at)(const asiosmtpd_cfg *node, size_t index);    /* map keys, in order */
    const asiosmtpd_cfg *(*cfg_get)(const asiosmtpd_cfg *node, asiosmtpd_str key); /* NULL if absent */

    /* -- Session and transaction views: only with the call of the running hook. -- */
    asiosmtpd_status (*session_info)(asiosmtpd_call *call, asiosmtpd_session_info *inout);
    asiosmtpd_status (*txn_info)(asiosmtpd_call *call, asiosmtpd_txn_info *inout);
    /* The index-th accepted recipient, or the index-th MAIL parameter. Borrowed until the hook
     * returns. E_INVALID when out of range. */
    asiosmtpd_status (*txn_rcpt_at)(asiosmtpd_call *call, size_t index, asiosmtpd_str *out);
    asiosmtpd_status (*txn_mail_param_at)(asiosmtpd_call *call, size_t index, asiosmtpd_str *out);

    /* The reply for this hook's verdict. `code` 200..599; `text` may hold '\n' between lines,
     * which the host sends as a multi-line reply (code-text ... code text). The class must fit
     * the verdict (2xx/3xx ACCEPT or CONTINUE, 4xx TEMPFAIL*, 5xx REJECT*), else the host logs
     * and answers 451 4.3.0. Copied. E_INVALID on CR, a line over 510 bytes or a bad code. */
    asiosmtpd_status (*set_reply)(asiosmtpd_call *call, uint16_t code, asiosmtpd_str text);

    /* Private data: one slot per instance and scope. The host calls dtor(data) (if not NULL)
     * when the scope ends or the slot is replaced, on the session's thread. */
    asiosmtpd_status (*slot_set)(asiosmtpd_call *call, int32_t scope, void *data,
                                 void (*dtor)(void *data));
    void *(*slot_get)(asiosmtpd_call *call, int32_t scope);

    /* Suspend the running hook: *out receives a token, the hook returns ASIOSMTPD_PENDING, and
     * the session waits (no further pipelined command runs) until complete(). */
    asiosmtpd_status (*suspend)(asiosmtpd_call *call, asiosmtpd_token *out);
    /* Finish a suspended hook, from ANY thread, exactly once per token. code 0 = no reply set.
     * Returns ASIOSMTPD_E_GONE when the session ended or the hook timed out (harmless),
     * E_INVALID for a verdict of PENDING or an unknown token. Strings are copied. */
    asiosmtpd_status (*complete)(asiosmtpd_token token, asiosmtpd_verdict verdict, uint16_t code,
                                 asiosmtpd_str text);

    /* One log line; thread-safe. call may be NULL (outside hooks); the host adds the plugin
     * instance name and the session id. Never log passwords or message bodies. */
    void (*log)(asiosmtpd_ctx *ctx, asiosmtpd_call *call, int32_t level, asiosmtpd_str message);

    /* ---- ABI 1.1 and later: append members here; never reorder, never remove ---- */
} asiosmtpd_host_api;

/* ------------------------------------------------------------------------------------------
 * The plugin descriptor and the entry symbol
 * ---------------------------------------------------------------------------------------- */
#define ASIOSMTPD_PF_THREAD_SAFE 0x1u /* hooks may run concurrently for different sessions */

/* Where create() writes a reason for refusing (NUL-terminated, at most cap bytes incl. NUL). */
typedef struct asiosmtpd_errbuf {
    char *buf;
    size_t cap;
} asiosmtpd_errbuf;

typedef struct asiosmtpd_plugin_descriptor {
    uint32_t struct_size;
    uint32_t abi_major;       /* ASIOSMTPD_ABI_MAJOR the plugin was built with */
    uint32_t abi_minor;       /* lowest host ABI minor the plugin needs */
    uint32_t flags;           /* ASIOSMTPD_PF_* */
    const char *name;         /* stable id, [a-z0-9_.-]+ */
    const char *version;      /* the plugin's own version */
    const char *description;  /* one line */
    /* Create one instance for one config entry: read the config, register hooks, commands and
     * keywords. Return ASIOSMTPD_OK and set *out_instance, or an error with a reason in err
     * (the host then refuses to start: "plugin X: <reason>"). Control thread. */
    asiosmtpd_status (*create)(const asiosmtpd_host_api *host, asiosmtpd_ctx *ctx,
                               asiosmtpd_registrar *reg, void **out_instance, asiosmtpd_errbuf *err);
    /* Stop the instance's threads and free it. Control thread; no hook of it runs any more. */
    void (*destroy)(void *instance);
    /* ---- ABI 1.1 and later: append members here ---- */
} asiosmtpd_plugin_descriptor;

#define ASIOSMTPD_DESCRIPTOR_V1_0_SIZE \
    (offsetof(asiosmtpd_plugin_descriptor, destroy) + sizeof(void (*)(void *)))

/* Each plugin exports exactly this one function; the major version is in its name. It returns
 * a pointer to a static descriptor and has no side effects. */
#define ASIOSMTPD_ENTRY_SYMBOL "asiosmtpd_plugin_entry_v1"
typedef const asiosmtpd_plugin_descriptor *(*asiosmtpd_entry_fn)(void);
ASIOSMTPD_EXPORT const asiosmtpd_plugin_descriptor *asiosmtpd_plugin_entry_v1(void);

#ifdef __cplusplus
}
#endif
#endif /* ASIOSMTPD_PLUGIN_H */
/* clang-format on */
