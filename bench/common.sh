# Shared by the scripts in bench/: what they install, the page they serve and the nginx
# configuration they run, so that every script measures against the same backend.
# Source it; the script defines log() and die() first.

# bench_install [COMMAND ...]: installs nginx-light, wrk and curl, and each further
# command (Debian package of the same name), with apt-get when missing; sets NGINX.
bench_install() {
    local need=() extra SUDO=""
    command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]] || need+=(nginx-light)
    command -v wrk >/dev/null 2>&1 || need+=(wrk)
    command -v curl >/dev/null 2>&1 || need+=(curl)
    for extra in "$@"; do
        command -v "$extra" >/dev/null 2>&1 || need+=("$extra")
    done
    if ((${#need[@]})); then
        log "installing ${need[*]}"
        [[ $(id -u) -eq 0 ]] || SUDO="sudo"
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >&2
        # The Debian package starts a system nginx on :80; we do not need it.
        $SUDO systemctl disable --now nginx >/dev/null 2>&1 || true
    fi
    NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
}

# bench_page FILE: the page of about one kibibyte (1,125 bytes) the small-file rounds ask for.
bench_page() {
    {
        echo '<!doctype html><html><head><meta charset="utf-8"><title>Bench</title></head><body>'
        for i in $(seq 1 14); do
            echo "<p>Paragraph $i of the benchmark page, padding to about one kibibyte.</p>"
        done
        echo '</body></html>'
    } >"$1"
}

# bench_nginx_conf DIR WORKERS BODY: an nginx.conf for a server run from DIR (pid, logs
# and temp files there) with WORKERS workers, BODY inside `http { }`. As root, nginx
# would drop its workers to `nobody`; they run as the current user instead.
bench_nginx_conf() {
    local user_line=""
    [[ $(id -u) -eq 0 ]] && user_line="user $(id -un) $(id -gn);"
    cat <<CONF
daemon on;
$user_line
worker_processes $2;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 75s;
    keepalive_requests 1000000;
    default_type application/octet-stream;
    types { text/html html; }
    client_body_temp_path $1/tmp;
    proxy_temp_path $1/tmp;
    fastcgi_temp_path $1/tmp;
    uwsgi_temp_path $1/tmp;
    scgi_temp_path $1/tmp;
$3
}
CONF
}

# bench_backend_conf DIR PORT WWW: the static backend every front forwards to (1 worker).
bench_backend_conf() {
    bench_nginx_conf "$1" 1 "    server { listen 127.0.0.1:$2; root $3; }"
}

# bench_front_conf DIR PORT BACKEND_PORT: nginx as the reverse proxy Portcullis is
# compared with — one worker per core (or FRONT_WORKERS), pooled keep-alive upstream
# connections, and the same forwarding headers Portcullis sets.
bench_front_conf() {
    bench_nginx_conf "$1" "${FRONT_WORKERS:-$(nproc)}" "    upstream backend {
        server 127.0.0.1:$3;
        keepalive 256;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$2;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$remote_addr;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_set_header X-Forwarded-Host \$http_host;
        }
    }"
}
