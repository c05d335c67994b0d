"""The data path, in one direction: a source (image folder, CSV, COCO / VOC / NUS-WIDE through
:mod:`~cssa_lightning.data.convert`) -> one record table (:mod:`~cssa_lightning.data.records`)
-> a seeded labeled / unlabeled split -> weak and strong views
(:mod:`~cssa_lightning.data.transforms`) -> the two-stream loaders of
:class:`~cssa_lightning.data.datamodule.MultiLabelDataModule`."""
