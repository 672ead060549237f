#!/bin/sh
# Container entrypoint of the Chorus image (POSIX sh; no bash, no envsubst).
#
#   chorus-entrypoint [node] [ARGS...]  render the config template from the environment,
#                                       then `exec chorus run --config FILE ARGS...`
#   chorus-entrypoint render            print the rendered config and exit (debugging)
#   chorus-entrypoint init              wait for the nodes, then run `chorusctl cluster
#                                       init` once ("already initialized" counts as done)
#   chorus-entrypoint CMD [ARGS...]     run any other command (e.g. chorusctl)
#
# Rendering follows the rules written at the top of cluster/config.template.toml:
# `${NAME}` is replaced by the variable's value, comment lines are copied unchanged, an
# unset variable is an error, SEEDS (comma-separated) becomes a TOML array and
# CLUSTER_TLS is built from TLS_CA / TLS_CERT / TLS_KEY.
#
# Environment (node):
#   NODE_ID (required), ADVERTISE (required), SEEDS (required),
#   DATA_DIR=/var/lib/chorus/data, GRPC_ADDR=0.0.0.0:7700, HTTP_ADDR=0.0.0.0:7780,
#   CLUSTER_LISTEN=0.0.0.0:7900, LOG_LEVEL=info,openraft=warn, TLS_CA/TLS_CERT/TLS_KEY,
#   CHORUS_TEMPLATE=/etc/chorus/config.template.toml, CHORUS_CONFIG_OUT=/tmp/chorus.toml
# Environment (init):
#   INIT_ENDPOINT=http://node1:7700   gRPC endpoint of any node
#   INIT_WAIT_URLS                    comma-separated URLs that must answer 2xx first
#                                     (each node's http://HOST:7780/healthz)
#   SHARDS=16, REPLICATION=3, INIT_TIMEOUT=300 (seconds)

set -eu

log() { printf 'chorus-entrypoint: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# A value that lands inside a TOML string: no quote, backslash or newline.
check_value() { # NAME VALUE
    # shellcheck disable=SC1003 # '\' is a literal backslash
    case $2 in
        *'"'* | *'\'*) die "$1 may not contain a double quote or a backslash (got: $2)" ;;
    esac
    nl='
'
    case $2 in
        *"$nl"*) die "$1 may not contain a newline" ;;
    esac
}

# SEEDS="a:7900, b:7900" -> ["a:7900", "b:7900"]
seeds_array() {
    out=''
    rest=$1,
    while [ -n "$rest" ]; do
        item=${rest%%,*}
        rest=${rest#*,}
        # trim blanks around the item
        item=${item#"${item%%[! ]*}"}
        item=${item%"${item##*[! ]}"}
        [ -n "$item" ] || continue
        case $item in
            *:*) ;;
            *) die "SEEDS: \"$item\" is not host:port" ;;
        esac
        out="${out:+$out, }\"$item\""
    done
    [ -n "$out" ] || die "SEEDS is empty: give the internal host:port of the first nodes, comma-separated"
    printf '[%s]' "$out"
}

tls_table() {
    set_count=0
    for v in "${TLS_CA:-}" "${TLS_CERT:-}" "${TLS_KEY:-}"; do
        [ -z "$v" ] || set_count=$((set_count + 1))
    done
    case $set_count in
        0) printf '' ;;
        3) printf '[cluster.tls]\nca = "%s"\ncert = "%s"\nkey = "%s"' "$TLS_CA" "$TLS_CERT" "$TLS_KEY" ;;
        *) die "set all of TLS_CA, TLS_CERT and TLS_KEY for mutual TLS, or none of them" ;;
    esac
}

# Replace every ${NAME} on non-comment lines of the template with $NAME's value.
# shellcheck disable=SC2016 # '${' is a literal ${
render() { # TEMPLATE
    [ -r "$1" ] || die "cannot read the config template $1 (set CHORUS_TEMPLATE)"
    lineno=0
    while IFS= read -r line || [ -n "$line" ]; do
        lineno=$((lineno + 1))
        stripped=${line#"${line%%[![:blank:]]*}"}
        case $stripped in
            '#'*)
                printf '%s\n' "$line"
                continue
                ;;
        esac
        out=''
        while :; do
            case $line in
                *'${'*)
                    pre=${line%%'${'*}
                    rest=${line#*'${'}
                    case $rest in
                        *'}'*) ;;
                        *) die "$1:$lineno: \${ without a closing }" ;;
                    esac
                    name=${rest%%'}'*}
                    line=${rest#*'}'}
                    case $name in
                        '' | [0-9]* | *[!A-Za-z0-9_]*) die "$1:$lineno: \${$name} is not a valid placeholder" ;;
                    esac
                    is_set='' value=''
                    eval "is_set=\${$name+x}"
                    [ -n "$is_set" ] || die "$1:$lineno: the template needs \$$name, which is not set"
                    eval "value=\$$name"
                    out=$out$pre$value
                    ;;
                *)
                    out=$out$line
                    break
                    ;;
            esac
        done
        printf '%s\n' "$out"
    done <"$1"
}

prepare_node_env() {
    [ -n "${NODE_ID:-}" ] || die "NODE_ID is required: this node's unique id (1, 2, 3, ...), never reused"
    [ -n "${ADVERTISE:-}" ] || die "ADVERTISE is required: the host:port peers dial to reach this node (e.g. node1:7900)"
    [ -n "${SEEDS:-}" ] || die "SEEDS is required: the internal host:port of the first nodes, comma-separated"
    case $NODE_ID in
        *[!0-9]* | 0*) die "NODE_ID must be a whole number >= 1 without leading zeros (got: $NODE_ID)" ;;
    esac
    DATA_DIR=${DATA_DIR:-/var/lib/chorus/data}
    GRPC_ADDR=${GRPC_ADDR:-0.0.0.0:7700}
    HTTP_ADDR=${HTTP_ADDR:-0.0.0.0:7780}
    CLUSTER_LISTEN=${CLUSTER_LISTEN:-0.0.0.0:7900}
    LOG_LEVEL=${LOG_LEVEL:-info,openraft=warn}
    for name in DATA_DIR GRPC_ADDR HTTP_ADDR CLUSTER_LISTEN LOG_LEVEL ADVERTISE SEEDS TLS_CA TLS_CERT TLS_KEY; do
        eval "check_value $name \"\${$name:-}\""
    done
    SEEDS_ARRAY=$(seeds_array "$SEEDS")
    CLUSTER_TLS=$(tls_table)
    # The template's ${SEEDS} is the TOML array; keep the list form for the log line.
    SEEDS_LIST=$SEEDS
    SEEDS=$SEEDS_ARRAY
    export NODE_ID DATA_DIR GRPC_ADDR HTTP_ADDR CLUSTER_LISTEN LOG_LEVEL ADVERTISE SEEDS CLUSTER_TLS
}

run_node() {
    prepare_node_env
    template=${CHORUS_TEMPLATE:-/etc/chorus/config.template.toml}
    config=${CHORUS_CONFIG_OUT:-/tmp/chorus.toml}
    rendered=$(render "$template") || exit 1
    umask 077
    printf '%s\n' "$rendered" >"$config" || die "cannot write $config (set CHORUS_CONFIG_OUT to a writable path)"
    log "node $NODE_ID: advertise $ADVERTISE, seeds $SEEDS_LIST, config $config"
    exec chorus run --config "$config" "$@"
}

now() { date +%s; }

init_cluster() {
    endpoint=${INIT_ENDPOINT:-http://node1:7700}
    shards=${SHARDS:-16}
    replication=${REPLICATION:-3}
    timeout=${INIT_TIMEOUT:-300}
    case $timeout in '' | *[!0-9]*) die "INIT_TIMEOUT must be a number of seconds (got: $timeout)" ;; esac
    deadline=$(($(now) + timeout))

    urls=$(printf '%s' "${INIT_WAIT_URLS:-}" | tr ',' ' ')
    for url in $urls; do
        log "waiting for $url"
        until curl --noproxy '*' -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null; do
            [ "$(now)" -lt "$deadline" ] || die "gave up after ${timeout}s: $url does not answer (is that node running? see its logs)"
            sleep 2
        done
    done

    log "chorusctl --endpoint $endpoint cluster init --shards $shards --replication $replication"
    while :; do
        if out=$(chorusctl --endpoint "$endpoint" cluster init --shards "$shards" --replication "$replication" 2>&1); then
            printf '%s\n' "$out"
            log "cluster initialized"
            break
        fi
        if printf '%s' "$out" | grep -qi 'already initiali[sz]ed'; then
            printf '%s\n' "$out"
            log "the cluster was already initialized; nothing to do"
            break
        fi
        [ "$(now)" -lt "$deadline" ] || die "gave up after ${timeout}s; last answer: $out"
        log "init failed, retrying in 3s: $out"
        sleep 3
    done
    chorusctl --endpoint "$endpoint" cluster status || log "cluster status failed (the shards may still be electing leaders)"
}

mode=${1:-node}
[ $# -eq 0 ] || shift
case $mode in
    node) run_node "$@" ;;
    render)
        prepare_node_env
        render "${CHORUS_TEMPLATE:-/etc/chorus/config.template.toml}"
        ;;
    init) init_cluster ;;
    -*) run_node "$mode" "$@" ;; # `docker run IMAGE --some-flag`: flags for chorus run
    *) exec "$mode" "$@" ;;
esac
