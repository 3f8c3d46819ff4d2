# refloop: the worker (`refloop worker`) and the gateway (`refloop gateway`) in one image.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY refloop ./refloop
COPY workflows ./workflows
COPY activities ./activities
COPY workers ./workers
COPY bench ./bench
# pip compiles the bytecode at install: the workflow sandbox re-imports the workflow module
# for every workflow it starts, and without .pyc files it would recompile it each time.
RUN pip install . && rm -rf /src

RUN useradd --create-home --uid 10001 --user-group refloop
USER refloop
WORKDIR /home/refloop
ENV REFLOOP_DATA_DIR=/home/refloop/data \
    REFLOOP_BIND_HOST=0.0.0.0

# HTTP/FHIR, HL7 MLLP, DICOM (gateway only)
EXPOSE 8000 2575 11112
ENTRYPOINT ["refloop"]
CMD ["worker"]
