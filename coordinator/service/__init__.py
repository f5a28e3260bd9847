"""The coordinator as a service for analysts: run store, worker, API, web console, client.

Nothing is imported here, so `coordinator.service.client` loads without FastAPI or SQLAlchemy.
"""
