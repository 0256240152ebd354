"""The job panel: every job of an exchange in a browser, live (``facestitch panel``).

A small web app on the bridge side (docs/hosts.md "The job panel"). It reads the
exchange through the protocol package only (``fsexchange.client`` ``list_jobs`` /
``job_status``, the documents' one loader) and writes only what a bridge may:
cancel requests (``fsexchange.client.cancel_job``), new jobs
(``fsexchange.client.submit_job`` of a job made by ``build_job``) and its own
archive folder. Modules:

- ``board``: the job list, kept current by polling (cheap for thousands of jobs:
  finished jobs are read once), paged and filtered; each job's details;
- ``files``: a job's files, looked up by job id + output key / frame index in
  its ``Result/1`` (no path from a request reaches the file system);
- ``actions``: cancel, retry, archive, and a draft's strength as a full job;
- ``security``: the token, the Host and same-origin checks;
- ``app``: the ASGI app (Starlette, the ``panel`` extra) with the page, the JSON
  API and server-sent events;
- ``command``: ``facestitch panel``; ``launch``: start one detached (the Resolve
  menu's "FaceStitch Open Panel") and find it again.

Only ``app`` and ``command``'s server part need the ``panel`` extra; everything
else is stdlib + ``fsexchange`` and imports in any bridge Python.
"""
