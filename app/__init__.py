"""The reference web service stageflow deploys: plain WSGI over PostgreSQL and Redis."""
