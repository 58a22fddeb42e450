"""``monaiunetseg listen``: a DICOM node that receives series, segments each study's FLAIR and sends the DICOM SEG
and a measurement report (TID 1500 SR) back: ``scp`` receives, ``spool`` keeps everything on disk (restart-safe),
``process`` runs the batch on a complete study, ``sr`` builds the report, ``sender`` stores the results.
"""
