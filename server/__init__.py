"""The sampling server: FastAPI routes over one batched sampling loop per device."""
