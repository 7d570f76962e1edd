# The control plane image, used by both the web and the Celery worker services
# of docker-compose.yml. The node agent runs on KVM hosts, not in this image.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    # templates/ and static/ sit beside the code in /app, so import the project
    # from there rather than from the copy pip puts in site-packages.
    PYTHONPATH=/app \
    FIREWORK_VAR_DIR=/var/lib/firework

WORKDIR /app

COPY pyproject.toml README.md ./
COPY nodeagent ./nodeagent
COPY controlplane ./controlplane
COPY firework_site ./firework_site
RUN pip install '.[server]'

COPY manage.py ./
COPY templates ./templates
COPY static ./static
COPY examples ./examples

# Generated secrets (Django's key, the first admin password) go to the volume
# mounted here; the processes never run as root.
RUN useradd --system --home-dir /app --shell /usr/sbin/nologin firework \
    && install -d -o firework -g firework -m 0700 /var/lib/firework
USER firework

# Static files are served by WhiteNoise straight from /app/static.
EXPOSE 8000
# One worker per CPU unless WEB_CONCURRENCY says otherwise (firework_site/gunicorn_conf.py).
CMD ["gunicorn", "-c", "python:firework_site.gunicorn_conf", "firework_site.wsgi", \
     "--bind", "0.0.0.0:8000", "--access-logfile", "-"]
