#!/bin/sh
# The compose stack's MLflow tracking server: MLflow's basic-auth app, never with a placeholder secret.
# The admin user (MLFLOW_AUTH_ADMIN_USERNAME / MLFLOW_AUTH_ADMIN_PASSWORD) is created on the first start
# against an empty user store; MLFLOW_FLASK_SERVER_SECRET_KEY signs the login forms (CSRF).
set -eu
for name in MLFLOW_AUTH_ADMIN_PASSWORD MLFLOW_FLASK_SERVER_SECRET_KEY; do
    value=$(printenv "$name" || true)
    case "$value" in
        ""|change-me|changeme|password1234)
            echo "mlflow: $name is unset or a placeholder ('$value'); set a real value in .env" >&2
            exit 2 ;;
    esac
    if [ "${#value}" -lt 12 ]; then
        echo "mlflow: $name is shorter than 12 characters; set a longer one in .env" >&2
        exit 2
    fi
done
exec mlflow server --app-name basic-auth "$@"
