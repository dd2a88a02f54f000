#!/bin/sh
# Two databases on one server: Optuna and MLflow must never share one (both keep alembic_version).
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<SQL
CREATE DATABASE optuna;
CREATE DATABASE mlflow;
SQL
